// at::parallel_for for oodnc's Rust row kernels (oodnc::numerics::parallel_rows).
//
// Rust threads of their own would compete with libtorch's OpenMP workers, which
// spin for a while after every parallel libtorch operation: on a 2-core machine
// a second Rust thread then gained nothing (measured: a row kernel 3.9 ms on two
// threads against 3.7 ms on one). Run on libtorch's own pool, the chunks take
// the cores those workers hold, the thread count follows tch::set_num_threads,
// and a call from inside a parallel region runs inline, as libtorch's own do.
#include <ATen/Parallel.h>

#include <cstdint>

extern "C" void oodnc_parallel_for(
    int64_t n,
    int64_t grain,
    void (*f)(void*, int64_t, int64_t),
    void* ctx) {
  // f never throws (the Rust side catches its panics), so neither does this.
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { f(ctx, begin, end); });
}
