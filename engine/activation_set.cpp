#include "engine/activation_set.h"

#include <ATen/core/Tensor.h>

#include "common/check.h"

namespace stp::engine {

const at::Tensor& ActivationSet::get(const std::string& name) const {
  auto it = fields_.find(name);
  if (it == fields_.end()) {
    std::string held;
    for (const auto& [key, _] : fields_) held += (held.empty() ? "" : ", ") + key;
    STP_ASSERT(false, "activation set (chunk ", chunk_, ", mb ", mb_, ") has no field '", name,
               "'; it holds [", held, "]");
  }
  return it->second;
}

std::int64_t ActivationSet::bytes() const {
  std::int64_t total = 0;
  for (const auto& [_, t] : fields_) {
    if (t.defined()) total += static_cast<std::int64_t>(t.nbytes());
  }
  return total;
}

}  // namespace stp::engine
