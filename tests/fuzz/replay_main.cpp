// A plain driver for the libFuzzer target in safetensors_fuzz.cpp: replays every
// file of the given corpus folders through LLVMFuzzerTestOneInput, so that the
// harness's checks (no exception other than mechlab::Error; accepted headers
// cover the buffer exactly, in order, and survive a round trip) run in CTest
// without clang or libFuzzer. A broken invariant aborts with its name; an
// unexpected exception is reported with the input's path. Fails on an empty
// corpus, so that a wrong path cannot pass by replaying nothing.
#include <dirent.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

// The regular files of `dir`, sorted (readdir, not std::filesystem: see the
// LibTorch trap in docs/ARCHITECTURE.md).
std::vector<std::string> files_of(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return out;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") out.push_back(dir + "/" + name);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR...\n", argv[0]);
    return 2;
  }
  size_t replayed = 0;
  for (int i = 1; i < argc; ++i) {
    const std::vector<std::string> files = files_of(argv[i]);
    if (files.empty()) {
      std::fprintf(stderr, "corpus folder '%s' is missing or empty\n", argv[i]);
      return 1;
    }
    for (const std::string& path : files) {
      std::ifstream in(path, std::ios::binary);
      const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                    std::istreambuf_iterator<char>());
      if (in.bad()) {
        std::fprintf(stderr, "cannot read '%s'\n", path.c_str());
        return 1;
      }
      try {
        LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "'%s': the parser threw a non-mechlab exception: %s\n", path.c_str(),
                     e.what());
        return 1;
      }
      ++replayed;
    }
  }
  std::printf("replayed %zu inputs, no finding\n", replayed);
  return 0;
}
