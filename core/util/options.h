// MECHLAB_OPTION: one member of a fluent options struct, in the style of the
// PyTorch C++ frontend's `LinearOptions(5, 2).bias(false)` (TORCH_ARG): a setter `name(value)`
// returning the struct, a getter `name()`, and the field `name_` with its default.
//
// Example:
//   struct ShuffleOptions {
//     /// Rows per batch.
//     MECHLAB_OPTION(ShuffleOptions, int64_t, batch_size, 4096)
//   };
//   auto o = ShuffleOptions().batch_size(1024);   // o.batch_size() == 1024
//
// Read options through the getter `name()`, as with TORCH_ARG; the field
// `name_` is an implementation detail.
#pragma once

#include <utility>

#define MECHLAB_OPTION(Self, type, name, init)   \
  type name##_ = init;                           \
  Self& name(type v) {                           \
    name##_ = std::move(v);                      \
    return *this;                                \
  }                                              \
  const type& name() const { return name##_; }   \
  type& name() { return name##_; }
