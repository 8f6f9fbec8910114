// Tests for core/formats/hdf5_file.h: tensor round trips for every dtype (bit-exact),
// layouts, groups and paths, attributes of both string kinds, and the errors a
// user sees for missing, foreign and truncated files.
#include "core/formats/hdf5_file.h"

#include "core/util/error.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace mechlab::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string temp_path(const std::string& name) {
  return mechlab::testing::temp_path("hdf5_test", name);
}

// Runs `fn`, expects a mechlab::Error, returns its message.
using mechlab::testing::error_of;

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

WriteOptions opts(int64_t chunk_rows, int gzip_level, bool overwrite = false) {
  WriteOptions o;
  o.chunk_rows(chunk_rows);
  o.gzip_level(gzip_level);
  o.overwrite(overwrite);
  return o;
}

// Random bit patterns of the given dtype (NaNs, infinities and subnormals
// included for the float types).
at::Tensor random_bits(at::ScalarType dtype, std::vector<int64_t> shape) {
  const int64_t item = static_cast<int64_t>(c10::elementSize(dtype));
  shape.back() *= item;
  return at::randint(0, 256, shape, at::kByte).view(dtype);
}

const std::vector<at::ScalarType> kAllDtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16,
                                                at::kInt,   at::kLong,   at::kByte, at::kChar};

TEST(H5FileTest, RoundTripsEveryDtypeBitExactly) {
  const std::string path = temp_path("dtypes.h5");
  std::vector<at::Tensor> written;
  {
    H5File f = H5File::create(path);
    for (size_t i = 0; i < kAllDtypes.size(); ++i) {
      written.push_back(random_bits(kAllDtypes[i], {3, 5, 7}));
      f.write_tensor("t/" + std::to_string(i), written.back());
    }
  }
  H5File f = H5File::open_read(path);
  for (size_t i = 0; i < kAllDtypes.size(); ++i) {
    const std::string name = "t/" + std::to_string(i);
    SCOPED_TRACE(c10::toString(kAllDtypes[i]));
    EXPECT_EQ(f.dtype(name), kAllDtypes[i]);
    EXPECT_THAT(f.shape(name), ElementsAre(3, 5, 7));
    const at::Tensor back = f.read_tensor(name);
    EXPECT_TRUE(back.is_contiguous());
    EXPECT_TRUE(same_bytes(back, written[i]));
  }
}

TEST(H5FileTest, RoundTripsScalarsAndEmptyTensors) {
  const std::string path = temp_path("scalars.h5");
  {
    H5File f = H5File::create(path);
    f.write_tensor("f32", at::scalar_tensor(3.25f));
    f.write_tensor("i64", at::scalar_tensor(int64_t(-7), at::kLong));
    f.write_tensor("bf16", at::scalar_tensor(1.5, at::kBFloat16));
    f.write_tensor("f16", at::scalar_tensor(-0.0, at::kHalf));
    f.write_tensor("empty", at::empty({0, 4}, at::kFloat), opts(8, 3));
  }
  H5File f = H5File::open_read(path);
  EXPECT_TRUE(f.shape("f32").empty());
  EXPECT_EQ(f.read_tensor("f32").dim(), 0);
  EXPECT_EQ(f.read_tensor("f32").item<float>(), 3.25f);
  EXPECT_EQ(f.read_tensor("i64").item<int64_t>(), -7);
  EXPECT_TRUE(same_bytes(f.read_tensor("bf16"), at::scalar_tensor(1.5, at::kBFloat16)));
  EXPECT_TRUE(same_bytes(f.read_tensor("f16"), at::scalar_tensor(-0.0, at::kHalf)));
  EXPECT_THAT(f.shape("empty"), ElementsAre(0, 4));
  EXPECT_EQ(f.read_tensor("empty").numel(), 0);
}

TEST(H5FileTest, BoolIsStoredAsUint8) {
  const std::string path = temp_path("bool.h5");
  const at::Tensor mask = at::tensor({1, 0, 0, 1}, at::kInt).to(at::kBool);
  H5File::create(path).write_tensor("mask", mask);
  const at::Tensor back = H5File::open_read(path).read_tensor("mask");
  EXPECT_EQ(back.scalar_type(), at::kByte);
  EXPECT_TRUE(at::equal(back, mask.to(at::kByte)));
}

TEST(H5FileTest, SixteenBitFloatLayouts) {
  // float16 must have h5py's layout (so numpy reads it as float16); bfloat16
  // has an 8-bit exponent and carries mechlab_dtype = "bfloat16".
  const std::string path = temp_path("halves.h5");
  {
    H5File f = H5File::create(path);
    f.write_tensor("h", at::ones({2}, at::kHalf));
    f.write_tensor("b", at::ones({2}, at::kBFloat16));
  }
  {
    H5File f = H5File::open_read(path);
    EXPECT_FALSE(f.has_attr("h", "mechlab_dtype"));
    EXPECT_EQ(f.read_attr_string("b", "mechlab_dtype"), "bfloat16");
  }

  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  struct Expect {
    const char* name;
    size_t epos, esize, msize, ebias;
  };
  for (const Expect& e : {Expect{"/h", 10, 5, 10, 15}, Expect{"/b", 7, 8, 7, 127}}) {
    SCOPED_TRACE(e.name);
    const hid_t ds = H5Dopen2(file, e.name, H5P_DEFAULT);
    const hid_t type = H5Dget_type(ds);
    size_t spos, epos, esize, mpos, msize;
    ASSERT_GE(H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize), 0);
    EXPECT_EQ(H5Tget_class(type), H5T_FLOAT);
    EXPECT_EQ(H5Tget_size(type), 2u);
    EXPECT_EQ(H5Tget_order(type), H5T_ORDER_LE);
    EXPECT_EQ(spos, 15u);
    EXPECT_EQ(epos, e.epos);
    EXPECT_EQ(esize, e.esize);
    EXPECT_EQ(mpos, 0u);
    EXPECT_EQ(msize, e.msize);
    EXPECT_EQ(H5Tget_ebias(type), e.ebias);
    H5Tclose(type);
    H5Dclose(ds);
  }
  H5Fclose(file);
}

TEST(H5FileTest, ChunkedGzipRoundTripAndLayout) {
  const std::string path = temp_path("gzip.h5");
  // Compressible: small integers as floats, from a non-contiguous view.
  const at::Tensor data = at::arange(64 * 1000, at::kFloat).remainder(7).reshape({64, 1000}).t();
  ASSERT_FALSE(data.is_contiguous());
  {
    H5File f = H5File::create(path);
    f.write_tensor("chunked", data, opts(100, 6));
    f.write_tensor("auto_chunks", data, opts(0, 1));
    f.write_tensor("only_chunks", data, opts(300, 0));
  }
  {
    H5File f = H5File::open_read(path);
    for (const char* name : {"chunked", "auto_chunks", "only_chunks"}) {
      EXPECT_TRUE(at::equal(f.read_tensor(name), data)) << name;
    }
  }
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  // Compression happened: the compressed datasets take far less than raw.
  const hsize_t raw_bytes = 64 * 1000 * sizeof(float);
  for (const char* name : {"/chunked", "/auto_chunks"}) {
    const hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    EXPECT_LT(H5Dget_storage_size(d), raw_bytes / 4) << name;
    H5Dclose(d);
  }
  const hid_t ds = H5Dopen2(file, "/chunked", H5P_DEFAULT);
  const hid_t dcpl = H5Dget_create_plist(ds);
  EXPECT_EQ(H5Pget_layout(dcpl), H5D_CHUNKED);
  hsize_t chunk[2] = {0, 0};
  EXPECT_EQ(H5Pget_chunk(dcpl, 2, chunk), 2);
  EXPECT_EQ(chunk[0], 100u);
  EXPECT_EQ(chunk[1], 64u);
  bool has_deflate = false;
  for (int i = 0; i < H5Pget_nfilters(dcpl); ++i) {
    unsigned flags = 0;
    size_t n = 0;
    has_deflate |=
        H5Pget_filter2(dcpl, i, &flags, &n, nullptr, 0, nullptr, nullptr) == H5Z_FILTER_DEFLATE;
  }
  EXPECT_TRUE(has_deflate);
  H5Pclose(dcpl);
  H5Dclose(ds);
  H5Fclose(file);
}

TEST(H5FileTest, RefusesBadWriteOptions) {
  H5File f = H5File::create(temp_path("badopts.h5"));
  EXPECT_THAT(error_of([&] { f.write_tensor("x", at::ones({2}), opts(0, 10)); }),
              HasSubstr("gzip_level must be 0..9"));
  EXPECT_THAT(error_of([&] { f.write_tensor("x", at::ones({2}), opts(-1, 0)); }),
              HasSubstr("chunk_rows must be >= 0"));
  EXPECT_THAT(error_of([&] { f.write_tensor("x", at::ones({2}, at::kShort)); }),
              HasSubstr("dtype int16 is not supported"));
  EXPECT_THAT(error_of([&] { f.write_tensor("", at::ones({2})); }), HasSubstr("root"));
}

TEST(H5FileTest, GroupsPathsAndDottedNames) {
  const std::string path = temp_path("groups.h5");
  {
    H5File f = H5File::create(path);
    f.write_tensor("params/blocks.1.attn.W_Q", at::ones({2, 2}));
    f.write_tensor("/params/blocks.0.attn.W_Q", at::zeros({2, 2}));
    f.write_tensor("params/embed.W_E", at::zeros({3}));
    f.ensure_group("a/b/c");
    f.ensure_group("a/b");  // exists: no-op
    EXPECT_THAT(error_of([&] { f.ensure_group("params/embed.W_E/x"); }),
                HasSubstr("is not a group"));
  }
  H5File f = H5File::open_read(path);
  EXPECT_TRUE(f.exists(""));
  EXPECT_TRUE(f.exists("/"));
  EXPECT_TRUE(f.exists("params"));
  EXPECT_TRUE(f.exists("params/blocks.0.attn.W_Q"));
  EXPECT_TRUE(f.exists("/params//blocks.0.attn.W_Q/"));
  EXPECT_FALSE(f.exists("params/blocks"));
  EXPECT_FALSE(f.exists("params/blocks.0.attn.W_Q/child"));
  EXPECT_FALSE(f.exists("nope/deeper"));
  EXPECT_TRUE(f.is_group("a/b/c"));
  EXPECT_FALSE(f.is_group("params/embed.W_E"));
  EXPECT_THAT(f.list(""), ElementsAre("a", "params"));
  EXPECT_THAT(f.list("params"), ElementsAre("blocks.0.attn.W_Q", "blocks.1.attn.W_Q", "embed.W_E"));
  EXPECT_THAT(f.list("a/b/c"), ElementsAre());
  EXPECT_THAT(error_of([&] { f.list("params/embed.W_E"); }), HasSubstr("is not a group"));
  EXPECT_THAT(error_of([&] { f.list("missing"); }), HasSubstr("no group '/missing'"));
  EXPECT_THAT(error_of([&] { f.read_tensor("params/missing"); }),
              HasSubstr("no dataset '/params/missing' in '" + path + "'"));
  EXPECT_THAT(error_of([&] { f.read_tensor("params"); }), HasSubstr("is a group"));
  EXPECT_THAT(error_of([&] { f.exists("a/../b"); }), HasSubstr("'..'"));
}

TEST(H5FileTest, OverwriteNeedsTheOption) {
  const std::string path = temp_path("overwrite.h5");
  H5File f = H5File::create(path);
  f.write_tensor("x", at::ones({2}));
  EXPECT_THAT(error_of([&] { f.write_tensor("x", at::zeros({3})); }), HasSubstr("already exists"));
  f.write_tensor("x", at::zeros({3}, at::kLong), opts(0, 0, true));
  EXPECT_TRUE(at::equal(f.read_tensor("x"), at::zeros({3}, at::kLong)));
  f.ensure_group("g");
  EXPECT_THAT(error_of([&] { f.write_tensor("g", at::ones({1}), opts(0, 0, true)); }),
              HasSubstr("a group of that name exists"));
}

TEST(H5FileTest, AttributesOnRootGroupsAndDatasets) {
  const std::string path = temp_path("attrs.h5");
  {
    H5File f = H5File::create(path);
    f.write_tensor("g/d", at::ones({2}));
    f.write_attr("", "s", std::string("root string"));
    f.write_attr("/", "i", int64_t(-42));
    f.write_attr("", "x", 2.5);
    f.write_attr("g", "n", 7);  // int -> int64
    f.write_attr("g", "big", size_t(1) << 40);
    f.write_attr("g/d", "unit", "ünïcode ✓");
    f.write_attr("g/d", "unit", "replaced");  // replaces
    f.write_attr("", "empty", std::string());
  }
  H5File f = H5File::open_read(path);
  EXPECT_EQ(f.read_attr_string("", "s"), "root string");
  EXPECT_EQ(f.read_attr_int("", "i"), -42);
  EXPECT_EQ(f.read_attr_double("", "x"), 2.5);
  EXPECT_EQ(f.read_attr_double("", "i"), -42.0);  // integers read as double too
  EXPECT_EQ(f.read_attr_int("g", "n"), 7);
  EXPECT_EQ(f.read_attr_int("g", "big"), int64_t(1) << 40);
  EXPECT_EQ(f.read_attr_string("g/d", "unit"), "replaced");
  EXPECT_EQ(f.read_attr_string("", "empty"), "");
  EXPECT_TRUE(f.has_attr("g/d", "unit"));
  EXPECT_FALSE(f.has_attr("g/d", "nope"));
  EXPECT_FALSE(f.has_attr("no/such/object", "unit"));

  EXPECT_THAT(error_of([&] { f.read_attr_int("", "s"); }), HasSubstr("not an integer"));
  EXPECT_THAT(error_of([&] { f.read_attr_int("", "x"); }), HasSubstr("not an integer"));
  EXPECT_THAT(error_of([&] { f.read_attr_string("", "i"); }), HasSubstr("not a string"));
  EXPECT_THAT(error_of([&] { f.read_attr_double("", "s"); }), HasSubstr("not a number"));
  EXPECT_THAT(error_of([&] { f.read_attr_string("g", "missing"); }),
              HasSubstr("no attribute 'missing' of '/g'"));
  EXPECT_THAT(error_of([&] { f.read_attr_string("nope", "s"); }),
              HasSubstr("no group or dataset '/nope'"));
}

TEST(H5FileTest, ReadsVariableAndFixedLengthStringAttributes) {
  // Written with the C API the way h5py and other tools do.
  const std::string path = temp_path("strings.h5");
  {
    const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    const hid_t scalar = H5Screate(H5S_SCALAR);

    // h5py: attrs["vlen"] = "variable ✓" (variable-length UTF-8).
    const hid_t vlen = H5Tcopy(H5T_C_S1);
    H5Tset_size(vlen, H5T_VARIABLE);
    H5Tset_cset(vlen, H5T_CSET_UTF8);
    const char* text = "variable \xe2\x9c\x93";
    hid_t a = H5Acreate2(file, "vlen", vlen, scalar, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Awrite(a, vlen, &text), 0);
    H5Aclose(a);

    // Variable-length ASCII.
    const hid_t vascii = H5Tcopy(H5T_C_S1);
    H5Tset_size(vascii, H5T_VARIABLE);
    const char* ascii = "ascii";
    a = H5Acreate2(file, "vascii", vascii, scalar, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Awrite(a, vascii, &ascii), 0);
    H5Aclose(a);

    // Fixed-length, NUL-padded (h5py: attrs["fixed"] = np.bytes_(b"fixed")).
    auto fixed = [&](const char* name, size_t size, H5T_str_t pad, const char* bytes) {
      const hid_t t = H5Tcopy(H5T_C_S1);
      H5Tset_size(t, size);
      H5Tset_strpad(t, pad);
      const hid_t at = H5Acreate2(file, name, t, scalar, H5P_DEFAULT, H5P_DEFAULT);
      ASSERT_GE(H5Awrite(at, t, bytes), 0);
      H5Aclose(at);
      H5Tclose(t);
    };
    fixed("fixed_nullpad", 8, H5T_STR_NULLPAD, "fixed\0\0\0");
    fixed("fixed_nullterm", 6, H5T_STR_NULLTERM, "fixed\0");
    fixed("fixed_spacepad", 8, H5T_STR_SPACEPAD, "fixed   ");
    fixed("fixed_full", 5, H5T_STR_NULLPAD, "fixed");

    // A 1-element array of variable-length strings is accepted; 2 are not.
    const hsize_t two = 2;
    const hid_t pair_space = H5Screate_simple(1, &two, nullptr);
    const char* pair[2] = {"a", "b"};
    a = H5Acreate2(file, "pair", vlen, pair_space, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Awrite(a, vlen, pair), 0);
    H5Aclose(a);

    H5Sclose(pair_space);
    H5Tclose(vascii);
    H5Tclose(vlen);
    H5Sclose(scalar);
    H5Fclose(file);
  }
  H5File f = H5File::open_read(path);
  EXPECT_EQ(f.read_attr_string("", "vlen"), "variable \xe2\x9c\x93");
  EXPECT_EQ(f.read_attr_string("", "vascii"), "ascii");
  EXPECT_EQ(f.read_attr_string("", "fixed_nullpad"), "fixed");
  EXPECT_EQ(f.read_attr_string("", "fixed_nullterm"), "fixed");
  EXPECT_EQ(f.read_attr_string("", "fixed_spacepad"), "fixed");
  EXPECT_EQ(f.read_attr_string("", "fixed_full"), "fixed");
  EXPECT_THAT(error_of([&] { f.read_attr_string("", "pair"); }), HasSubstr("holds 2 values"));
}

TEST(H5FileTest, RefusesUnsupportedDatasetTypes) {
  const std::string path = temp_path("uint16.h5");
  {
    const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    const hsize_t n = 4;
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const hid_t ds =
        H5Dcreate2(file, "counts", H5T_STD_U16LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(ds, 0);
    H5Dclose(ds);
    H5Sclose(space);
    H5Fclose(file);
  }
  H5File f = H5File::open_read(path);
  const std::string msg = error_of([&] { f.read_tensor("counts"); });
  EXPECT_THAT(msg, HasSubstr("'/counts'"));
  EXPECT_THAT(msg, HasSubstr("unsigned 16-bit integer"));
  EXPECT_THAT(msg, HasSubstr("cannot read"));
  EXPECT_THAT(error_of([&] { f.dtype("counts"); }), HasSubstr("unsigned 16-bit integer"));
  EXPECT_THAT(f.shape("counts"), ElementsAre(4));  // the shape is still readable
}

TEST(H5FileTest, OpenErrorsNameThePathAndTheProblem) {
  // Missing.
  const std::string missing = temp_path("does_not_exist.h5");
  std::string msg = error_of([&] { H5File::open_read(missing); });
  EXPECT_THAT(msg, HasSubstr(missing));
  EXPECT_THAT(msg, HasSubstr("No such file"));
  EXPECT_THAT(error_of([&] { H5File::open_readwrite(missing); }), HasSubstr("No such file"));

  // A directory.
  msg = error_of([&] { H5File::open_read(::testing::TempDir()); });
  EXPECT_THAT(msg, HasSubstr("is a directory"));

  // Not HDF5.
  const std::string text = temp_path("not_hdf5.txt");
  std::ofstream(text) << "just some text, not HDF5\n";
  msg = error_of([&] { H5File::open_read(text); });
  EXPECT_THAT(msg, HasSubstr(text));
  EXPECT_THAT(msg, HasSubstr("is not an HDF5 file"));

  // Truncated: the first half of a valid file.
  const std::string whole = temp_path("whole.h5");
  {
    H5File f = H5File::create(whole);
    f.write_tensor("a", at::randn({256, 64}));
    f.write_attr("", "note", "x");
  }
  ASSERT_NO_THROW(H5File::open_read(whole));
  std::ifstream in(whole, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string half = temp_path("half.h5");
  std::ofstream(half, std::ios::binary).write(bytes.data(), bytes.size() / 2);
  msg = error_of([&] { H5File::open_read(half); });
  EXPECT_THAT(msg, HasSubstr(half));
  EXPECT_THAT(msg, ::testing::AnyOf(HasSubstr("truncated"), HasSubstr("not an HDF5 file")));
  EXPECT_THAT(msg, ::testing::Not(HasSubstr("locked")));

  // Creating in a missing directory.
  EXPECT_THAT(error_of([&] { H5File::create(temp_path("no/such/dir/x.h5")); }),
              HasSubstr("does not exist"));
}

TEST(H5FileTest, ReadOnlyFilesRefuseWrites) {
  const std::string path = temp_path("readonly.h5");
  H5File::create(path).write_tensor("x", at::ones({1}));
  H5File f = H5File::open_read(path);
  EXPECT_FALSE(f.writable());
  EXPECT_THAT(error_of([&] { f.write_tensor("y", at::ones({1})); }), HasSubstr("read-only"));
  EXPECT_THAT(error_of([&] { f.write_attr("", "a", int64_t(1)); }), HasSubstr("read-only"));
  EXPECT_THAT(error_of([&] { f.ensure_group("g"); }), HasSubstr("read-only"));
}

TEST(H5FileTest, ReadWriteMoveAndClose) {
  const std::string path = temp_path("rw.h5");
  H5File::create(path).write_tensor("x", at::ones({2}));
  {
    H5File f = H5File::open_readwrite(path);
    f.write_tensor("y", at::full({2}, 3.0));
    f.flush();
    H5File g = std::move(f);
    EXPECT_FALSE(f.is_open());  // NOLINT(bugprone-use-after-move): documented state
    EXPECT_TRUE(g.is_open());
    g.write_attr("y", "k", 1.0);
    g.close();
    g.close();  // idempotent
    EXPECT_THAT(error_of([&] { g.exists("x"); }), HasSubstr("is closed"));
  }
  H5File f = H5File::open_read(path);
  EXPECT_THAT(f.list(""), ElementsAre("x", "y"));
  EXPECT_TRUE(at::equal(f.read_tensor("y"), at::full({2}, 3.0)));
  EXPECT_EQ(f.read_attr_double("y", "k"), 1.0);
}

// The same file can be opened twice for reading (checkpoint + store readers).
TEST(Hdf5Test, TwoReadersOfOneFile) {
  const std::string path = temp_path("two_readers.h5");
  H5File::create(path).write_tensor("x", at::arange(5, at::kLong));
  H5File a = H5File::open_read(path);
  H5File b = H5File::open_read(path);
  EXPECT_TRUE(at::equal(a.read_tensor("x"), b.read_tensor("x")));
}

}  // namespace
}  // namespace mechlab::core
