// MECHLAB_OPTION: one member of a fluent options struct, in the style of the
// PyTorch C++ frontend's `LinearOptions(5, 2).bias(false)`: a public field
// `name_` with its default and a setter `name(value)` returning the struct.
//
// Example:
//   struct ShuffleOptions {
//     /// Rows per batch.
//     MECHLAB_OPTION(ShuffleOptions, int64_t, batch_size, 4096)
//   };
//   auto o = ShuffleOptions().batch_size(1024);   // o.batch_size_ == 1024
#pragma once

#include <utility>

#define MECHLAB_OPTION(Self, type, name, init) \
  type name##_ = init;                         \
  Self& name(type v) {                         \
    name##_ = std::move(v);                    \
    return *this;                              \
  }
