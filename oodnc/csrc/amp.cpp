// A C interface to libtorch's per-device autocast state, which tch 0.26 does
// not expose (its `autocast` only toggles CUDA float16).
//
// Only the few functions used are declared, with the exact signatures of
// ATen/autocast_mode.h (libtorch 2.13), so that this file compiles in a second
// without libtorch's headers. `DeviceType` and `ScalarType` are `enum class :
// int8_t` in c10; declaring them opaquely keeps the mangled names identical, so a
// libtorch without these symbols fails at link time, never at run time.
#include <cstdint>

namespace c10 {
enum class DeviceType : int8_t;
enum class ScalarType : int8_t;
}  // namespace c10

namespace at {
namespace autocast {
bool is_autocast_enabled(c10::DeviceType device_type);
void set_autocast_enabled(c10::DeviceType device_type, bool enabled);
c10::ScalarType get_autocast_dtype(c10::DeviceType device_type);
void set_autocast_dtype(c10::DeviceType device_type, c10::ScalarType dtype);
int increment_nesting();
int decrement_nesting();
void clear_cache();
}  // namespace autocast
}  // namespace at

extern "C" {

int oodnc_autocast_is_enabled(int device_type) {
  return at::autocast::is_autocast_enabled(static_cast<c10::DeviceType>(device_type)) ? 1 : 0;
}

void oodnc_autocast_set_enabled(int device_type, int enabled) {
  at::autocast::set_autocast_enabled(static_cast<c10::DeviceType>(device_type), enabled != 0);
}

int oodnc_autocast_get_dtype(int device_type) {
  return static_cast<int>(at::autocast::get_autocast_dtype(static_cast<c10::DeviceType>(device_type)));
}

void oodnc_autocast_set_dtype(int device_type, int dtype) {
  at::autocast::set_autocast_dtype(static_cast<c10::DeviceType>(device_type), static_cast<c10::ScalarType>(dtype));
}

int oodnc_autocast_increment_nesting() { return at::autocast::increment_nesting(); }

int oodnc_autocast_decrement_nesting() { return at::autocast::decrement_nesting(); }

void oodnc_autocast_clear_cache() { at::autocast::clear_cache(); }

}  // extern "C"
