#include "engine/chunk.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros_like.h>

namespace stp::engine {

double Chunk::loss(const ActivationSet& set) const { return loss_tensor(set).item<double>(); }

void Chunk::zero_grad() {
  for (Param& p : params()) {
    if (p.grad.defined()) {
      p.grad.zero_();
    } else {
      p.grad = at::zeros_like(p.value);
    }
  }
}

}  // namespace stp::engine
