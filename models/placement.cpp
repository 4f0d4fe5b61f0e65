// Placement: Note [Parameter placement] in placement.h.
#include "models/placement.h"

#include "common/check.h"

namespace stp::models {

std::int64_t layer_of_param(const std::string& name) {
  if (name.rfind("layers.", 0) != 0) return -1;
  return std::stoll(name.substr(7, name.find('.', 7) - 7));
}

std::vector<const ParamSpec*> stage_params(const std::vector<ParamSpec>& specs,
                                           std::int64_t n_layers, int stage, int stages) {
  STP_CHECK(stage >= 0 && stage < stages, "stage=", stage, " is out of range [0, ", stages, ")");
  const LayerRange layers = stage_layers(n_layers, stage, stages);
  const bool first = stage == 0, last = stage == stages - 1;
  std::vector<const ParamSpec*> embeddings, held_layers, rest;
  for (const ParamSpec& s : specs) {
    const std::int64_t l = layer_of_param(s.name);
    if (s.name == "wte" || s.name == "wpe") {
      if (first) embeddings.push_back(&s);
    } else if (l >= 0) {
      if (l >= layers.first && l < layers.first + layers.count) held_layers.push_back(&s);
    } else if (last) {
      rest.push_back(&s);
    }
  }
  std::vector<const ParamSpec*> out = embeddings;
  out.insert(out.end(), held_layers.begin(), held_layers.end());
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

}  // namespace stp::models
