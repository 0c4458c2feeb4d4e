// A C interface to libtorch's fused SGD kernel (`at::_fused_sgd_`, the kernel
// behind `torch.optim.SGD(fused=True)`) and to "set to none" gradient
// clearing, neither of which tch 0.26 exposes.
//
// One fused call updates a whole list of parameters: one multi-tensor kernel
// on CUDA (instead of ~6 small kernels per parameter, 62 parameters in
// ResNet-18) and one vectorised pass per tensor on the CPU.
//
// Tensors come in as `at::Tensor*` (what tch's `Tensor::as_ptr` gives). Errors
// are caught here (no C++ exception crosses into Rust) and reported through
// `oodnc_optim_last_error`.
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_fused_sgd.h>
#include <c10/util/Exception.h>

#include <exception>
#include <string>
#include <vector>

namespace {
thread_local std::string last_error;

std::vector<at::Tensor> gather(at::Tensor* const* ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*ts[i]);  // shares storage
  return out;
}
}  // namespace

extern "C" {

const char* oodnc_optim_last_error() { return last_error.c_str(); }

// `params[i] -= lr * d_i` with PyTorch's SGD rule (dampening 0, no maximize);
// `bufs` is empty (n_bufs = 0) when momentum is 0, else one buffer per
// parameter, overwritten with the (decayed) gradient when `is_first_step`.
// Returns 0, or 1 with the message in `oodnc_optim_last_error()`.
int oodnc_fused_sgd(at::Tensor* const* params, at::Tensor* const* grads, size_t n, at::Tensor* const* bufs,
                    size_t n_bufs, double weight_decay, double momentum, double lr, int nesterov,
                    int is_first_step) {
  try {
    at::NoGradGuard no_grad;
    at::_fused_sgd_(gather(params, n), gather(grads, n), gather(bufs, n_bufs), weight_decay, momentum, lr,
                    /*dampening=*/0.0, nesterov != 0, /*maximize=*/false, is_first_step != 0);
    return 0;
  } catch (const c10::Error& e) {
    last_error = e.what_without_backtrace();  // the message, not libtorch's C++ stack
    return 1;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 1;
  }
}

// Drops the gradients of `params` (PyTorch's `zero_grad(set_to_none=True)`):
// the next backward writes fresh gradients instead of adding to zeroed ones.
int oodnc_grad_set_to_none(at::Tensor* const* params, size_t n) {
  try {
    for (size_t i = 0; i < n; ++i) params[i]->mutable_grad().reset();
    return 0;
  } catch (const c10::Error& e) {
    last_error = e.what_without_backtrace();  // the message, not libtorch's C++ stack
    return 1;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 1;
  }
}

}  // extern "C"
