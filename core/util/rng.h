// Rng: a small seeded random generator whose stream is the same on every
// platform and compiler (std::uniform_int_distribution is not: its algorithm
// is the library's choice). Task generators and shuffled readers use it so
// that a seed names one dataset, one row order, everywhere.
//
// splitmix64 (Steele, Lea & Flood 2014) seeds xoshiro256** (Blackman & Vigna
// 2018); bounded integers use Lemire's multiply-and-reject, which is unbiased.
//
// Example:
//   mechlab::core::Rng rng(seed);
//   int64_t year = rng.uniform_int(2, 98);   // inclusive bounds
//   rng.shuffle(order);
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace mechlab::core {

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& s : s_) s = splitmix64(seed);
  }

  /// 64 uniformly random bits.
  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  /// Uniform in [0, n); n must be positive.
  uint64_t below(uint64_t n) {
    // Lemire (2019): the high word of x * n is uniform once the low word is
    // past the threshold 2^64 mod n.
    __uint128_t m = static_cast<__uint128_t>(next()) * n;
    uint64_t low = static_cast<uint64_t>(m);
    if (low < n) {
      const uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<__uint128_t>(next()) * n;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }

  /// Uniform in [lo, hi], both inclusive; requires lo <= hi.
  int64_t uniform_int(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(below(static_cast<uint64_t>(hi - lo) + 1));
  }

  /// Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  /// Fisher-Yates shuffle.
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  uint64_t s_[4];
};

}  // namespace mechlab::core
