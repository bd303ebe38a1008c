// CPU kernel of gls::philox4x32_10: the Philox4x32-10 block function on u32 words held in int64.
#include "noise.h"

namespace gls {
namespace {

using at::Tensor;

Tensor philox4x32_10_cpu(const Tensor& counter, const Tensor& key) {
  check_philox_args(counter, key, c10::DeviceType::CPU);
  const Tensor c = counter.contiguous(), k = key.contiguous();
  Tensor out = at::empty(c.sizes(), c.options());
  const int64_t* cp = c.const_data_ptr<int64_t>();
  const int64_t* kp = k.const_data_ptr<int64_t>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  at::parallel_for(0, c.numel() / 4, kNoiseGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      U32x4 x{{static_cast<uint32_t>(cp[4 * j]), static_cast<uint32_t>(cp[4 * j + 1]), static_cast<uint32_t>(cp[4 * j + 2]),
               static_cast<uint32_t>(cp[4 * j + 3])}};
      x = philox4x32_10(x, static_cast<uint32_t>(kp[2 * j]), static_cast<uint32_t>(kp[2 * j + 1]));
      for (int w = 0; w < 4; ++w) op[4 * j + w] = x.v[w];
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gls, CPU, m) { m.impl("philox4x32_10", &philox4x32_10_cpu); }

}  // namespace gls
