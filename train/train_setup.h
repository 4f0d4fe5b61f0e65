// train_setup: how a TrainConfig becomes the pieces of a training run — the GPT's shape, the
// trainer's options, the data source and loader options, the device — so `stp train` and the
// training benchmarks (train/train_bench.h) build exactly the same run from one config.
//
// Thread-safety: pure functions.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>

#include "data/data.h"
#include "engine/trainer.h"
#include "models/gpt_config.h"
#include "models/llama_config.h"
#include "train/train_config.h"

namespace stp::train {

// The model section as a GptConfig.
models::GptConfig gpt_config(const TrainConfig& config);
// The model section as a LlamaConfig (mlp_hidden is its ffn_hidden).
models::LlamaConfig llama_config(const TrainConfig& config);
// The Trainer's model for model.arch (gpt or llama) on `device`.
engine::ModelFactory model_factory(const TrainConfig& config, const at::Device& device);

// Schedule, layout, offload, optimizer and communication options for a model on `device`
// (train_device; the backend follows it). The learning rate is the peak; `stp train` sets the
// scheduled one every step.
engine::TrainerOptions trainer_options(const TrainConfig& config, const at::Device& device);

// run.device: "cuda" -> the local_rank-th GPU, "cpu" -> the CPU.
at::Device train_device(const TrainConfig& config, int local_rank);

// The data section as a DataSource, and the loader options for one DP rank.
data::DataSource data_source(const TrainConfig& config);
data::LoaderOptions loader_options(const TrainConfig& config, int dp_rank, int dp_size);

// Tokens one optimizer step consumes over the whole job: m * micro_batch_size * seq_len * dp.
std::int64_t tokens_per_step(const TrainConfig& config, int dp);

}  // namespace stp::train
