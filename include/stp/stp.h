// stp — Synergistic Tensor and Pipeline parallel training. The one header an embedding program
// includes (link stp::stp):
//
//   #include <stp/stp.h>
//
//   stp::GptConfig cfg;  cfg.n_layers = 8; ...
//   stp::TrainerOptions opt;  opt.schedule = "stp"; opt.tp = 2; opt.pp = 2;
//   opt.microbatches = 8; opt.offload_budget = "80%";
//   stp::Trainer trainer(stp::gpt_model(cfg), opt);   // joins the job from RANK/WORLD_SIZE/...
//   for (...) double loss = trainer.step(batch);      // tokens/targets (m*b, T) int64
//
// A model of your own implements stp::Chunk (engine/chunk.h): its forward, activation-gradient
// and weight-gradient passes as units that return "all-reduce this" to the engine. Launch with
// `stp run -n N -- your_program`, torchrun --no-python, mpirun or srun (docs/launch.md).
#pragma once

#include "engine/chunk.h"
#include "engine/comm.h"
#include "engine/gpt.h"
#include "engine/gpt_config.h"
#include "engine/optimizer.h"
#include "engine/trainer.h"
#include "schedule/generators.h"
#include "schedule/program.h"

namespace stp {

using engine::ActivationSet;
using engine::AdamWOptions;
using engine::Chunk;
using engine::GptConfig;
using engine::gpt_model;
using engine::MicroBatch;
using engine::ModelFactory;
using engine::Param;
using engine::Pass;
using engine::Trainer;
using engine::TrainerOptions;
using engine::TrainStepStats;

}  // namespace stp
