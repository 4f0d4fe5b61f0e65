#include "schedule/rank_builder.h"

#include "common/check.h"

namespace stp::schedule {

void check_counts(int p, int m, const char* kind) {
  STP_CHECK(p >= 1, "pp=", p, " must be >= 1");
  STP_CHECK(m >= 1, "microbatches=", m, " must be >= 1 for the ", kind, " schedule");
}

Program empty_program(const char* kind, int p, int m, int v, Placement placement) {
  check_counts(p, m, kind);
  STP_ASSERT(placement == Placement::kLoop || v == 2, "V placement needs v=2, got v=", v);
  Program prog;
  prog.kind = kind;
  prog.p = p;
  prog.m = m;
  prog.v = v;
  const int stages = v * p;
  prog.stage_rank.resize(stages);
  prog.stage_chunk.resize(stages);
  for (int r = 0; r < p; ++r) {
    for (int c = 0; c < v; ++c) {
      const int s = placement == Placement::kLoop ? c * p + r : (c == 0 ? r : 2 * p - 1 - r);
      prog.stage_rank[s] = r;
      prog.stage_chunk[s] = c;
    }
  }
  prog.ranks.resize(p);
  return prog;
}

RankBuilder::RankBuilder(Program& prog, int rank, int m)
    : prog_(prog), rank_(rank), m_(m), stage_(prog.v, -1), fwd_(prog.v, 0), bwd_(prog.v, 0) {
  for (int c = 0; c < prog.v; ++c) {
    stage_[c] = prog.stage_of(rank, c);
    STP_ASSERT(stage_[c] >= 0, "rank ", rank, " has no chunk ", c);
  }
}

Part RankBuilder::next_f(int chunk) {
  STP_ASSERT(fwd_[chunk] < m_, "rank ", rank_, " chunk ", chunk, ": forward ", fwd_[chunk],
             " beyond m=", m_);
  return Part{Pass::kF, chunk, stage_[chunk], fwd_[chunk]++};
}

Part RankBuilder::next_b(int chunk, bool fuse_w) {
  STP_ASSERT(bwd_[chunk] < fwd_[chunk], "rank ", rank_, " chunk ", chunk, ": backward ",
             bwd_[chunk], " before its forward");
  Part part{fuse_w ? Pass::kBW : Pass::kB, chunk, stage_[chunk], bwd_[chunk]++};
  if (!fuse_w) fifo_.push_back(Part{Pass::kW, chunk, part.stage, part.mb});
  return part;
}

Part RankBuilder::pop_w() {
  STP_ASSERT(!fifo_.empty(), "rank ", rank_, ": W with no deferred weight gradient");
  Part part = fifo_.front();
  fifo_.pop_front();
  return part;
}

void RankBuilder::emit(Op op, std::vector<Part> parts) {
  prog_.ranks[rank_].push_back(compute_instr(op, std::move(parts)));
}

void RankBuilder::f(int chunk) { emit(Op::kF, {next_f(chunk)}); }

void RankBuilder::b(int chunk, bool fuse_w) {
  emit(fuse_w ? Op::kBW : Op::kB, {next_b(chunk, fuse_w)});
}

void RankBuilder::w() { emit(Op::kW, {pop_w()}); }

void RankBuilder::ff(int chunk) {
  Part first = next_f(chunk);
  emit(Op::kFF, {first, next_f(chunk)});
}

void RankBuilder::fb(int f_chunk, int b_chunk, bool fuse_w) {
  Part fwd = next_f(f_chunk);
  emit(Op::kFB, {fwd, next_b(b_chunk, fuse_w)});
}

void RankBuilder::fw(int chunk) {
  Part fwd = next_f(chunk);
  emit(Op::kFW, {fwd, pop_w()});
}

void RankBuilder::finish() const {
  for (int c = 0; c < prog_.v; ++c) {
    STP_ASSERT(fwd_[c] == m_ && bwd_[c] == m_, "rank ", rank_, " chunk ", c, " ran ", fwd_[c],
               " forwards and ", bwd_[c], " backwards, want m=", m_);
  }
  STP_ASSERT(fifo_.empty(), "rank ", rank_, ": ", fifo_.size(), " weight gradients never ran");
}

void drop_microbatches(Program& prog, int m) {
  for (auto& list : prog.ranks) {
    std::vector<Instr> kept;
    kept.reserve(list.size());
    for (Instr& in : list) {
      STP_ASSERT(in.is_compute(), "drop_microbatches needs a compute-only program");
      std::vector<Part> parts;
      for (const Part& part : in.parts)
        if (part.mb < m) parts.push_back(part);
      if (parts.empty()) continue;
      if (parts.size() < in.parts.size()) {
        switch (parts[0].pass) {
          case Pass::kF: in.op = Op::kF; break;
          case Pass::kB: in.op = Op::kB; break;
          case Pass::kW: in.op = Op::kW; break;
          case Pass::kBW: in.op = Op::kBW; break;
        }
      }
      in.parts = std::move(parts);
      kept.push_back(std::move(in));
    }
    list = std::move(kept);
  }
  prog.m = m;
}

}  // namespace stp::schedule
