// Trains a small GPT with the STP schedule from a program of your own.
//   stp run -n 4 -- ./embed_train          (TP 2 x PP 2)
//   ./embed_train                          (one process: TP 1 x PP 1, 1F1B)
#include <stp/stp.h>

#include <ATen/ATen.h>

#include <cstdio>

int main() {
  const int world = stp::launch_env().world_size;

  stp::GptConfig cfg;
  cfg.vocab = 64;
  cfg.seq_len = 16;
  cfg.d_model = 32;
  cfg.n_heads = 4;
  cfg.n_layers = 4;

  stp::TrainerOptions opt;
  opt.tp = world >= 4 ? 2 : 1;
  opt.pp = world >= 4 ? 2 : world;
  opt.schedule = opt.pp > 1 ? stp::ScheduleKind::kSTP : stp::ScheduleKind::k1F1B;
  opt.microbatches = 4 * opt.pp;
  opt.optimizer.lr = 1e-2;

  stp::Trainer trainer(stp::gpt_model(cfg), opt);
  // A learnable toy task: the next token is the current one plus one (mod vocab).
  at::Generator gen = at::detail::createCPUGenerator(42);
  for (int step = 0; step < 20; ++step) {
    at::Tensor start = at::randint(cfg.vocab, {opt.microbatches * 2, 1}, gen, at::kLong);
    at::Tensor seq = (start + at::arange(cfg.seq_len + 1, at::kLong)).remainder(cfg.vocab);
    stp::MicroBatch batch{seq.narrow(1, 0, cfg.seq_len).contiguous(),
                          seq.narrow(1, 1, cfg.seq_len).contiguous()};
    double loss = trainer.step(batch);
    if (trainer.rank() == 0 && step % 5 == 4) std::printf("step %d loss %.4f\n", step + 1, loss);
  }
  return 0;
}
