// stp — Synergistic Tensor and Pipeline parallel training. The one header an embedding program
// includes (link stp::stp):
//
//   #include <stp/stp.h>
//
//   const stp::LaunchEnv job = stp::launch_env();   // RANK, WORLD_SIZE, ... as the launcher set
//   stp::GptConfig cfg;  cfg.n_layers = 8; ...
//   stp::TrainerOptions opt;  opt.schedule = stp::ScheduleKind::kSTP; opt.tp = 2; opt.pp = 2;
//   opt.microbatches = 8; opt.offload_budget = stp::OffloadBudget::of_percent(80);
//   stp::Trainer trainer(stp::gpt_model(cfg), opt);   // joins that job
//   for (...) double loss = trainer.step(batch);      // tokens/targets (m*b, T) int64
//
// A model of your own implements stp::Chunk (engine/chunk.h): its forward, activation-gradient
// and weight-gradient passes as units that return "all-reduce this" to the engine. Launch with
// `stp run -n N -- your_program`, torchrun --no-python, mpirun or srun (docs/launch.md).
// Nothing here includes c10d: the communication layer stays inside the library.
#pragma once

#include "engine/chunk.h"
#include "engine/comm_options.h"
#include "engine/offload_plan.h"
#include "engine/optimizer.h"
#include "engine/trainer.h"
#include "models/gpt.h"
#include "models/gpt_config.h"
#include "schedule/generators.h"

namespace stp {

using engine::ActivationSet;
using engine::AdamWOptions;
using engine::Chunk;
using engine::CommBackend;
using engine::LaunchEnv;
using engine::MicroBatch;
using engine::ModelFactory;
using engine::OffloadBudget;
using engine::Param;
using engine::Pass;
using engine::Trainer;
using engine::TrainerOptions;
using engine::TrainStepStats;
using models::gpt_model;
using models::GptConfig;
using ScheduleKind = schedule::Kind;

// Where this process sits in the job, as the launcher (stp run, torchrun, mpirun, srun) set it.
inline LaunchEnv launch_env() { return engine::launch_env_from_environment(); }

}  // namespace stp
