// Helpers shared by the data tests (tests/data): a shard source and loader options in one call,
// a file written with its folders, and the check that a loader's order is its seed's.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/data.h"
#include "file_test_util.h"

namespace stp::testing {

// Token shards at `path` (a file, a folder or a glob) of `format` and vocabulary `vocab`.
inline data::DataSource shard_source(const std::filesystem::path& path, std::int64_t vocab = 65536,
                                     data::DataFormat format = data::DataFormat::kLlmc) {
  data::DataSource src;
  src.format = format;
  src.path = path.string();
  src.vocab = vocab;
  return src;
}

inline data::LoaderOptions loader_options(std::int64_t seq_len, std::uint64_t seed = 1,
                                          int dp_rank = 0, int dp = 1) {
  data::LoaderOptions o;
  o.seq_len = seq_len;
  o.seed = seed;
  o.dp_rank = dp_rank;
  o.dp_size = dp;
  return o;
}

// Writes `bytes` to `p` (replacing it), creating its folders first.
inline void write_with_dirs(const std::filesystem::path& p, const std::string& bytes) {
  std::filesystem::create_directories(p.parent_path());
  write_bytes(p, bytes);
}

// The first `rows` rows of `a` and `same_seed` are equal, those of `other_seed` are not.
inline void expect_order_from_seed(data::DataLoader& a, data::DataLoader& same_seed,
                                   data::DataLoader& other_seed, std::int64_t rows) {
  const engine::MicroBatch x = a.next_batch(rows), y = same_seed.next_batch(rows),
                           z = other_seed.next_batch(rows);
  EXPECT_TRUE(at::equal(x.tokens, y.tokens));
  EXPECT_TRUE(at::equal(x.targets, y.targets));
  EXPECT_FALSE(at::equal(x.tokens, z.tokens));
}

// `resumed`, restored from `saved` (a position_json() as a checkpoint holds it), yields exactly
// `expected` (batches of `rows`) and then stands where `run`, the loader that was saved, does.
inline void expect_resumes_bit_identically(data::DataLoader& resumed, const std::string& saved,
                                           const std::vector<engine::MicroBatch>& expected,
                                           std::int64_t rows, const data::DataLoader& run) {
  resumed.restore_position_json(nlohmann::json::parse(saved));
  for (const engine::MicroBatch& want : expected) {
    const engine::MicroBatch got = resumed.next_batch(rows);
    ASSERT_TRUE(at::equal(got.tokens, want.tokens));
    ASSERT_TRUE(at::equal(got.targets, want.targets));
  }
  EXPECT_EQ(resumed.position(), run.position());
}

}  // namespace stp::testing
