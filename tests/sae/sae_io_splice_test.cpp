// SAELens folders: export -> import round trips bit for bit, the exported
// cfg.json has the keys SAELens's loader requires, and bad folders are
// refused with one line naming the key or tensor. Splicing: an SAE attached
// at a hook with the error term leaves the logits as they were; without it
// the model runs on the reconstruction (checked against a plain hook).
#include "core/formats/safetensors.h"
#include "core/formats/safetensors_writer.h"
#include "core/formats/text_file.h"
#include "core/model/presets.h"
#include "core/store/activation_store.h"
#include "hooks/activation_capture.h"
#include "hooks/hooked_transformer.h"
#include "sae/registry.h"
#include "sae/saelens_io.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <limits>

namespace mechlab::sae {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using mechlab::testing::error_of;
using mechlab::testing::temp_path;

const std::string kData = std::string(MECHLAB_TEST_DATA) + "/sae/";

std::shared_ptr<Sae> random_sae(SaeConfig cfg, uint64_t seed) {
  auto sae = make_sae(cfg);
  at::manual_seed(seed);
  for (auto& [n, t] : sae->named_parameters()) {
    at::Tensor p = t;
    p.copy_(at::randn(p.sizes()) * (n == "threshold" ? 0.05 : 0.3));
    if (n == "threshold") p.abs_();
  }
  return sae;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

TEST(SaeLensIo, ExportImportRoundTripIsBitExact) {
  for (const std::string arch : {"relu", "topk", "jumprelu", "gated"}) {
    SaeConfig cfg;
    cfg.architecture(arch).d_in(12).d_sae(40).k(5).rescale_acts_by_decoder_norm(arch == "topk")
        .apply_b_dec_to_input(arch != "gated").hook_name("blocks.1.hook_mlp_out");
    if (arch == "relu") cfg.normalize_activations("constant_norm_rescale");
    auto sae = random_sae(cfg, 3);
    const std::string dir = temp_path("sae_io", "rt_" + arch);
    export_saelens(*sae, dir);
    auto back = import_saelens(dir);
    EXPECT_EQ(back->architecture(), arch);
    EXPECT_EQ(back->cfg().hook_name(), "blocks.1.hook_mlp_out");
    EXPECT_EQ(back->cfg().apply_b_dec_to_input(), cfg.apply_b_dec_to_input());
    EXPECT_EQ(back->cfg().normalize_activations(), cfg.normalize_activations());
    EXPECT_EQ(back->cfg().k(), arch == "topk" ? 5 : 100);
    EXPECT_EQ(back->cfg().rescale_acts_by_decoder_norm(), arch == "topk");
    ASSERT_EQ(back->named_parameters().size(), sae->named_parameters().size());
    for (const auto& [n, t] : sae->named_parameters()) {
      EXPECT_TRUE(at::equal(back->param(n), t)) << arch << " " << n;
    }
    // The keys SAELens 6.x's load_from_disk needs, with SAELens's values.
    const nlohmann::json j = read_json(dir + "/cfg.json");
    for (const std::string& key : saelens_required_keys()) {
      const auto dot = key.find('.');
      if (dot == std::string::npos) {
        EXPECT_TRUE(j.contains(key)) << key;
      } else {
        ASSERT_TRUE(j.contains(key.substr(0, dot))) << key;
        EXPECT_TRUE(j[key.substr(0, dot)].contains(key.substr(dot + 1))) << key;
      }
    }
    EXPECT_EQ(j["architecture"], arch == "relu" ? "standard" : arch);
    EXPECT_EQ(j["dtype"], "float32");
    EXPECT_GE(std::stoi(j["metadata"]["sae_lens_version"].get<std::string>()), 6);
    EXPECT_FALSE(fs::exists(dir + ".tmp"));  // the stage was renamed into place
  }
}

TEST(SaeLensIo, ExportRefusesAnExistingFolderUnlessOverwriting) {
  SaeConfig cfg;
  cfg.d_in(4).d_sae(8);
  auto a = random_sae(cfg, 1), b = random_sae(cfg, 2);
  const std::string dir = temp_path("sae_io", "over");
  export_saelens(*a, dir);
  EXPECT_THAT(error_of([&] { export_saelens(*b, dir); }),
              HasSubstr("exists; choose another folder or set the overwrite option"));
  EXPECT_TRUE(at::equal(import_saelens(dir)->param("W_enc"), a->param("W_enc")));
  export_saelens(*b, dir, ExportOptions().overwrite(true));
  EXPECT_TRUE(at::equal(import_saelens(dir)->param("W_enc"), b->param("W_enc")));
  const std::string other = temp_path("sae_io", "not_an_sae");
  fs::create_directories(other);
  EXPECT_THAT(error_of([&] { export_saelens(*b, other, ExportOptions().overwrite(true)); }),
              HasSubstr("is not an SAELens folder (no cfg.json)"));
}

/// A copy of SAELens's saved topk folder with cfg.json edited and tensors
/// replaced or dropped.
std::string bad_folder(const std::string& name, const std::function<void(nlohmann::json&)>& edit_cfg,
                       const std::function<void(std::map<std::string, at::Tensor>&)>& edit_tensors) {
  const std::string src = kData + "saved/topk/";
  const std::string dir = temp_path("sae_io", name);
  fs::create_directories(dir);
  nlohmann::json j = read_json(src + "cfg.json");
  edit_cfg(j);
  core::write_text_file(dir + "/cfg.json", j.dump());
  auto file = core::SafetensorsFile::open(src + "sae_weights.safetensors");
  std::map<std::string, at::Tensor> t;
  for (const auto& n : file.names()) t[n] = file.tensor(n).clone();
  edit_tensors(t);
  core::write_safetensors(dir + "/sae_weights.safetensors", {t.begin(), t.end()});
  return dir;
}

TEST(SaeLensIo, RefusesBadFoldersNamingTheKeyOrTensor) {
  auto same = [](auto&) {};
  EXPECT_THAT(error_of([&] {
                import_saelens(bad_folder("missing", same, [](auto& t) { t.erase("b_dec"); }));
              }),
              HasSubstr("have no tensor b_dec, which a topk SAE needs"));
  EXPECT_THAT(error_of([&] {
                import_saelens(bad_folder("shape", same, [](auto& t) { t["W_enc"] = at::zeros({32, 64}); }));
              }),
              HasSubstr("tensor W_enc has shape [32, 64], expected [32, 128] for d_in 32, d_sae 128"));
  EXPECT_THAT(error_of([&] {
                import_saelens(bad_folder("nan", same, [](auto& t) {
                  t["W_dec"][3][4] = std::numeric_limits<float>::quiet_NaN();
                }));
              }),
              HasSubstr("tensor W_dec has NaN or inf entries"));
  EXPECT_THAT(error_of([&] {
                import_saelens(bad_folder("extra", same, [](auto& t) { t["W_gate"] = at::ones({128}); }));
              }),
              HasSubstr("hold a tensor W_gate that a topk SAE does not have"));
  EXPECT_THAT(error_of([&] {
                import_saelens(bad_folder("sf", same, [](auto& t) { t["scaling_factor"] = at::full({128}, 2.0); }));
              }),
              HasSubstr("tensor scaling_factor is not all ones"));
  EXPECT_THAT(error_of([&] {
                import_saelens(bad_folder("arch", [](auto& j) { j["architecture"] = "matryoshka"; }, same));
              }),
              HasSubstr("architecture \"matryoshka\" is not supported"));
  EXPECT_THAT(error_of([&] {
                import_saelens(bad_folder("k", [](auto& j) { j["k"] = 1000; }, same));
              }),
              HasSubstr("SAE k = 1000 must lie in [1, d_sae = 128]"));
  EXPECT_THAT(error_of([&] {
                import_saelens(bad_folder("nod", [](auto& j) { j.erase("d_in"); }, same));
              }),
              HasSubstr("has no \"d_in\"; add it"));
  EXPECT_THAT(error_of([&] {
                import_saelens(bad_folder("z", [](auto& j) { j["reshape_activations"] = "hook_z"; }, same));
              }),
              HasSubstr("SAE reshape_activations \"hook_z\" reads attention outputs, but hook_name is "
                        "\"blocks.0.hook_resid_post\"; use a blocks.L.attn.hook_z hook or reshape_activations none"));
  EXPECT_THAT(error_of([&] {
                import_saelens(bad_folder("zq", [](auto& j) { j["reshape_activations"] = "hook_q"; }, same));
              }),
              HasSubstr("reshape_activations \"hook_q\" is not supported; use none or hook_z"));
  EXPECT_THAT(error_of([&] { import_saelens(temp_path("sae_io", "nothing_here")); }),
              HasSubstr("no such file; an SAELens folder holds cfg.json and sae_weights.safetensors"));
  // Every message is one line.
  const std::string msg = error_of([&] {
    import_saelens(bad_folder("missing2", same, [](auto& t) { t.erase("W_dec"); }));
  });
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

TEST(SaeConfigCheck, RefusesUnknownArchitectureAndBadK) {
  EXPECT_THAT(error_of([] { make_sae(SaeConfig().architecture("vanilla").d_in(4).d_sae(8)); }),
              HasSubstr("unknown SAE architecture \"vanilla\"; use relu, topk, batchtopk, jumprelu or gated"));
  EXPECT_THAT(error_of([] { make_sae(SaeConfig().architecture("topk").d_in(4).d_sae(8).k(9)); }),
              HasSubstr("SAE k = 9 must lie in [1, d_sae = 8]"));
  EXPECT_THAT(error_of([] { make_sae(SaeConfig().architecture("topk").d_in(4).d_sae(8).k(2.5)); }),
              HasSubstr("must be a whole number"));
}

// ---------------------------------------------------------------- splicing

const char* kHost = "blocks.0.hook_resid_post";

hooks::HookedTransformer tiny_model() {
  return hooks::HookedTransformer(core::Transformer(core::preset("tiny"), 5));
}

at::Tensor tokens_for(const hooks::HookedTransformer& m) {
  at::manual_seed(11);
  return at::randint(0, m.cfg().d_vocab, {3, 7}, at::kLong);
}

TEST(SaeSplice, WithErrorTermLogitsAreUnchangedWithoutItTheModelRunsOnTheReconstruction) {
  hooks::HookedTransformer model = tiny_model();
  const at::Tensor tokens = tokens_for(model);
  const at::Tensor clean = model.forward(tokens);
  SaeConfig cfg;
  cfg.architecture("topk").d_in(model.cfg().d_model).d_sae(4 * model.cfg().d_model).k(4);
  auto sae = random_sae(cfg, 7);

  sae->use_error_term(true);
  model.attach(kHost, sae);
  const at::Tensor spliced = model.forward(tokens);
  // recons + (x - recons) equals x up to one rounding per entry.
  EXPECT_TRUE(at::allclose(spliced, clean, 1e-5, 1e-5));
  const std::string p = std::string(kHost) + ".sae.";
  // SAELens's point names, in firing order, right after the host.
  const auto names = model.hook_names();
  auto host_at = std::find(names.begin(), names.end(), kHost);
  ASSERT_LT(host_at + 6, names.end());
  EXPECT_EQ(std::vector<std::string>(host_at + 1, host_at + 7),
            (std::vector<std::string>{p + "hook_sae_input", p + "hook_sae_acts_pre", p + "hook_sae_acts_post",
                                      p + "hook_sae_recons", p + "hook_sae_error", p + "hook_sae_output"}));
  auto [logits, cache] = model.run_with_cache(tokens);
  const at::Tensor x = cache[kHost];  // [batch, pos, d_model]
  EXPECT_TRUE(at::equal(cache[p + "hook_sae_input"], x));
  EXPECT_TRUE(at::equal(cache[p + "hook_sae_acts_post"], sae->encode(x)));
  EXPECT_TRUE(at::allclose(cache[p + "hook_sae_error"], x - sae->reconstruct(x), 1e-6, 1e-6));
  EXPECT_EQ((cache[p + "hook_sae_acts_post"] != 0).sum(-1).max().item<int64_t>(), 4);
  // Editing a latent changes the model's output even with the error term.
  const at::Tensor ablated = model.run_with_hooks(
      tokens, {{p + "hook_sae_acts_post", [](at::Tensor& a, const hooks::HookPoint&) { a = at::zeros_like(a); }}});
  EXPECT_GT((ablated - clean).abs().max().item<double>(), 1e-3);
  model.detach(kHost, "sae");

  sae->use_error_term(false);
  model.attach(kHost, sae);
  const at::Tensor no_error = model.forward(tokens);
  model.detach(kHost, "sae");
  const at::Tensor hooked = model.run_with_hooks(
      tokens, {{kHost, [&](at::Tensor& a, const hooks::HookPoint&) { a = sae->reconstruct(a); }}});
  EXPECT_TRUE(at::allclose(no_error, hooked, 1e-5, 1e-6));
  EXPECT_GT((no_error - clean).abs().max().item<double>(), 1e-3);  // the reconstruction matters
}

TEST(SaeSplice, LatentsGoToAnActivationStore) {
  hooks::HookedTransformer model = tiny_model();
  SaeConfig cfg;
  cfg.architecture("jumprelu").d_in(model.cfg().d_model).d_sae(3 * model.cfg().d_model);
  auto sae = random_sae(cfg, 9);
  sae->use_error_term(true);
  model.attach(kHost, sae);
  core::Dataset ds;
  ds.d_vocab = model.cfg().d_vocab;
  at::manual_seed(4);
  ds.tokens = at::randint(0, ds.d_vocab, {5, 6}, at::kInt);
  const std::string path = temp_path("sae_splice", "latents.h5");
  fs::remove(path);
  const std::string acts = std::string(kHost) + ".sae.hook_sae_acts_post";
  hooks::cache_activations(model, ds, path,
                           hooks::CacheOptions().hooks({acts, kHost}).dtype(at::kFloat).batch_size(2)
                               .chunk_rows(8).progress(false));
  auto store = core::ActivationStore::open(path);
  ASSERT_EQ(store.num_rows(), 30);
  const at::Tensor rows = store.rows(acts, 0, 30);  // [rows, d_sae]
  EXPECT_EQ(rows.size(1), cfg.d_sae());
  EXPECT_TRUE(at::allclose(rows, sae->encode(store.rows(kHost, 0, 30)), 1e-5, 1e-6));
  EXPECT_GT((rows != 0).sum().item<int64_t>(), 0);
  fs::remove(path);
}

TEST(SaeSplice, RefusesAHookOfAnotherWidth) {
  hooks::HookedTransformer model = tiny_model();
  SaeConfig cfg;
  cfg.d_in(model.cfg().d_model + 1).d_sae(16);
  auto sae = make_sae(cfg);
  EXPECT_THAT(error_of([&] { model.attach(kHost, sae); }),
              HasSubstr("an SAE with d_in " + std::to_string(model.cfg().d_model + 1) + " does not fit " + kHost));
}

}  // namespace
}  // namespace mechlab::sae
