// probe: random sequences with a per-position label, for testing linear
// probes and their controls (Alain & Bengio 2016; Hewitt & Liang 2019's
// control tasks compare a probe on a real property with one on an easy one).
//
// Each sequence draws a pool of `pool` distinct ids from [1, d_vocab), then
// fills T - 1 positions after BOS (id 0) uniformly from that pool, so repeats
// are common and "seen before" is balanced-ish.
//
// Format (raw ids, tokenizer ""):
//   tokens  int32 [N, T]  BOS, then T - 1 ids from the sequence's pool
//   labels  int64 [N, T]  by `label`:
//             "seen_before"     1 if this id occurred earlier in the sequence, else 0
//             "position_parity" position % 2
//             "token_class"     id % n_classes
//           BOS is -1 (no label) for every kind: its activations are the
//           model's attention sink, unlike any other position, and would
//           distort a probe.
//
// Example:
//   Dataset ds = make_probe(ProbeOptions{}.with_label("token_class").with_n_classes(3));
#pragma once

#include "core/data/dataset.h"

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::core::tasks {

struct ProbeOptions {
  int64_t n = 1000;                   ///< number of sequences N
  int64_t seq_len = 32;               ///< T, BOS included
  int64_t d_vocab = 64;               ///< ids are in [0, d_vocab); 0 is BOS
  int64_t pool = 8;                   ///< distinct ids per sequence (smaller = more repeats)
  std::string label = "seen_before";  ///< "seen_before", "position_parity" or "token_class"
  int64_t n_classes = 2;              ///< classes of "token_class" (id % n_classes)
  int64_t seed = 0;                   ///< generator seed (core/util/rng.h)

  // clang-format off
  ProbeOptions& with_n(int64_t v) { n = v; return *this; }
  ProbeOptions& with_seq_len(int64_t v) { seq_len = v; return *this; }
  ProbeOptions& with_d_vocab(int64_t v) { d_vocab = v; return *this; }
  ProbeOptions& with_pool(int64_t v) { pool = v; return *this; }
  ProbeOptions& with_label(std::string v) { label = std::move(v); return *this; }
  ProbeOptions& with_n_classes(int64_t v) { n_classes = v; return *this; }
  ProbeOptions& with_seed(int64_t v) { seed = v; return *this; }
  // clang-format on

  template <typename V>
  void visit(V&& v) {
    v("n", n, "number of sequences");
    v("seq_len", seq_len, "sequence length T, BOS included");
    v("d_vocab", d_vocab, "vocabulary size; 0 is BOS, other ids come from [1, d_vocab)");
    v("pool", pool, "distinct ids per sequence, drawn from [1, d_vocab); smaller = more repeats");
    v("label", label, "per-position label: seen_before, position_parity or token_class");
    v("n_classes", n_classes, "number of classes of token_class (id % n_classes)");
    v("seed", seed, "generator seed");
  }
};

/// The label kinds, in the order documented above.
const std::vector<std::string>& probe_label_kinds();

/// Random sequences with per-position labels (see the top of this file).
Dataset make_probe(const ProbeOptions& options);

}  // namespace mechlab::core::tasks
