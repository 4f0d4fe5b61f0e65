// Placement: which of a model's parameters a pipeline stage holds. The one rule that
// DecoderChunk::add_params builds a chunk by and checkpoint::held_param_names reshards by.
//
// Note [Parameter placement]
// Stage s of S holds the layers [first, first + count) = stage_layers(n_layers, s, S) (every
// "layers.<l>.<name>" with l in that range); stage 0 also holds the embeddings (wte, wpe), the
// last stage every other parameter (the final norm ln_f and the LM head). Which pipeline rank
// holds stage s is the schedule's choice (schedule::Program::stage_rank: its kind and, for
// 1f1b-i, the chunks per rank), not this rule's.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/gpt_params.h"

namespace stp::models {

// The layer l of a "layers.<l>.<name>" parameter; -1 for any other name.
std::int64_t layer_of_param(const std::string& name);

// The specs of `specs` (a whole model's, n_layers layers) that stage `stage` of `stages` holds
// (Note [Parameter placement]), in the order a chunk stores them: the embeddings, the held
// layers' parameters in `specs` order, then the rest. The pointers point into `specs`.
// REQUIRES (checked): 0 <= stage < stages <= n_layers.
std::vector<const ParamSpec*> stage_params(const std::vector<ParamSpec>& specs,
                                           std::int64_t n_layers, int stage, int stages);

}  // namespace stp::models
