#include "engine/activation_set.h"

#include <ATen/core/Tensor.h>

#include <algorithm>

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

void ActivationSet::put(const std::string& name, at::Tensor t) {
  auto [it, inserted] = fields_.insert_or_assign(name, std::move(t));
  (void)it;
  if (inserted) order_.push_back(name);
}

void ActivationSet::erase(const std::string& name) {
  if (fields_.erase(name) == 0) return;
  order_.erase(std::remove(order_.begin(), order_.end(), name), order_.end());
}

ActivationSet::Selection ActivationSet::select_leading(double share) const {
  STP_CHECK(share > 0 && share <= 1, "offload share ", share, " of activation set (chunk ", chunk_,
            ", mb ", mb_, ") must be in (0, 1]");
  const double target = share * static_cast<double>(bytes());
  Selection out;
  auto take = [&](const std::string& name) {
    auto it = fields_.find(name);  // a name erased through fields() is no longer there
    if (it == fields_.end() || !it->second.defined() || it->second.nbytes() == 0) return;
    if (share < 1 && static_cast<double>(out.bytes) >= target) return;
    out.fields.push_back(name);
    out.bytes += static_cast<std::int64_t>(it->second.nbytes());
  };
  for (const std::string& name : order_) take(name);
  for (const auto& [name, _] : fields_)  // put straight into fields(): not in order_
    if (std::find(order_.begin(), order_.end(), name) == order_.end()) take(name);
  return out;
}

std::int64_t ActivationSet::bytes() const {
  std::int64_t total = 0;
  for (const auto& [_, t] : fields_) {
    if (t.defined()) total += static_cast<std::int64_t>(t.nbytes());
  }
  return total;
}

}  // namespace stp::engine
