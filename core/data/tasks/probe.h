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
//   Dataset ds = make_probe(ProbeOptions{}.label("token_class").n_classes(3));
#pragma once

#include "core/data/dataset.h"
#include "core/util/options.h"

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::core::tasks {

struct ProbeOptions {
  /// number of sequences N
  MECHLAB_OPTION(ProbeOptions, int64_t, n, 1000)
  /// T, BOS included
  MECHLAB_OPTION(ProbeOptions, int64_t, seq_len, 32)
  /// ids are in [0, d_vocab); 0 is BOS
  MECHLAB_OPTION(ProbeOptions, int64_t, d_vocab, 64)
  /// distinct ids per sequence (smaller = more repeats)
  MECHLAB_OPTION(ProbeOptions, int64_t, pool, 8)
  /// "seen_before", "position_parity" or "token_class"
  MECHLAB_OPTION(ProbeOptions, std::string, label, "seen_before")
  /// classes of "token_class" (id % n_classes)
  MECHLAB_OPTION(ProbeOptions, int64_t, n_classes, 2)
  /// generator seed (core/util/rng.h)
  MECHLAB_OPTION(ProbeOptions, int64_t, seed, 0)

  template <typename V>
  void visit(V&& v) {
    v("n", n_, "number of sequences");
    v("seq_len", seq_len_, "sequence length T, BOS included");
    v("d_vocab", d_vocab_, "vocabulary size; 0 is BOS, other ids come from [1, d_vocab)");
    v("pool", pool_, "distinct ids per sequence, drawn from [1, d_vocab); smaller = more repeats");
    v("label", label_, "per-position label: seen_before, position_parity or token_class");
    v("n_classes", n_classes_, "number of classes of token_class (id % n_classes)");
    v("seed", seed_, "generator seed");
  }
};

/// The label kinds, in the order documented above.
const std::vector<std::string>& probe_label_kinds();

/// Random sequences with per-position labels (see the top of this file).
Dataset make_probe(const ProbeOptions& options);

}  // namespace mechlab::core::tasks
