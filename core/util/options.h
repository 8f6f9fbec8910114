// MECHLAB_OPTION: one member of a fluent options struct, in the style of the
// PyTorch C++ frontend's `LinearOptions(5, 2).bias(false)` (TORCH_ARG): a setter `name(value)`
// returning the struct, getters `name()` (const and non-const), and the private field
// `name_` with its default. The macro ends in `public:`, so members declared after it
// stay public.
//
// Example:
//   struct ShuffleOptions {
//     /// Rows per batch.
//     MECHLAB_OPTION(ShuffleOptions, int64_t, batch_size, 4096)
//   };
//   auto o = ShuffleOptions().batch_size(1024);   // o.batch_size() == 1024
//
// Read options through the getter `name()`, as with TORCH_ARG; the field `name_`
// is private (member functions of the struct itself, such as a task's visit(), may
// use it). An options struct has no constructor taking its fields: build it with
// the setters, `Options().a(1).b(2)`, or default-construct and set.
#pragma once

#include <utility>

// `type const&`, not `const type&`: for a pointer type T* the getter returns
// T* const&, not const T*&.
#define MECHLAB_OPTION(Self, type, name, init)   \
 public:                                         \
  Self& name(type v) {                           \
    name##_ = std::move(v);                      \
    return *this;                                \
  }                                              \
  type const& name() const { return name##_; }   \
  type& name() { return name##_; }               \
                                                 \
 private:                                        \
  type name##_ = init;                           \
                                                 \
 public:
