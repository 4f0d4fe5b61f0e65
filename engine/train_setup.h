// train_setup: how a TrainConfig becomes the pieces of a training run — the GPT's shape, the
// trainer's options, the data source and loader options, the device — so `stp train` and the
// training benchmarks (engine/train_bench.h) build exactly the same run from one config.
//
// Thread-safety: pure functions.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>

#include "engine/data.h"
#include "engine/gpt_config.h"
#include "engine/train_config.h"
#include "engine/trainer.h"

namespace stp::engine {

// The model section as a GptConfig.
GptConfig gpt_config(const TrainConfig& config);

// Schedule, layout, offload, optimizer and communication options (backend from run.device).
// The learning rate is the peak; `stp train` sets the scheduled one every step.
TrainerOptions trainer_options(const TrainConfig& config);

// run.device: "cuda" -> the local_rank-th GPU, "cpu" -> the CPU.
at::Device train_device(const TrainConfig& config, int local_rank);

// The data section as a DataSource, and the loader options for one DP rank.
DataSource data_source(const TrainConfig& config);
LoaderOptions loader_options(const TrainConfig& config, int dp_rank, int dp_size);

// Tokens one optimizer step consumes over the whole job: m * micro_batch_size * seq_len * dp.
std::int64_t tokens_per_step(const TrainConfig& config, int dp);

}  // namespace stp::engine
