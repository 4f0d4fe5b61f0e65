#include "checkpoint/safetensors.h"

#include <ATen/ATen.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "file_test_util.h"

namespace stp::checkpoint {
namespace {
namespace fs = std::filesystem;

using namespace stp::testing;  // TempDir, read/write_bytes, expect_invalid, kPython

// A file from a raw header (padded with spaces) and `data_bytes` zero bytes of data.
void write_raw(const fs::path& p, std::string header, std::size_t data_bytes) {
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  write_bytes(p, out + header + std::string(data_bytes, '\0'));
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
}

// Runs a Python snippet; returns (exit code, combined output).
std::pair<int, std::string> run_python(const fs::path& dir, const std::string& code) {
  const fs::path script = dir / "check.py";
  write_bytes(script, code);
  const std::string cmd = std::string(kPython) + " " + script.string() + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  while (std::size_t n = std::fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TensorMap numpy_compatible_tensors() {
  TensorMap t;
  t["f64"] = at::arange(6, at::kDouble).view({2, 3}) * 0.25;
  t["f32"] = at::arange(5, at::kFloat) * -1.5;
  t["f16"] = at::arange(4, at::kHalf) / 8;
  t["i64"] = at::arange(3, at::kLong) * (std::int64_t{1} << 40);
  t["i32"] = at::arange(7, at::kInt) - 3;
  t["i16"] = at::arange(2, at::kShort);
  t["i8"] = at::arange(3, at::kChar) - 1;
  t["u8"] = at::arange(250, 256, at::kByte);
  t["bool"] = at::tensor(std::vector<std::int64_t>{1, 0, 1}).to(at::kBool);
  t["scalar"] = at::scalar_tensor(3.5, at::kFloat);  // 0-d
  t["empty"] = at::empty({0}, at::kFloat);
  t["empty2d"] = at::empty({3, 0}, at::kLong);
  return t;
}

// ---- XXH64 ---------------------------------------------------------------------------------

TEST(Safetensors, Xxh64MatchesReferenceVectors) {
  // Reference values from libxxhash's XXH64.
  EXPECT_EQ(xxh64("", 0), 0xef46db3751d8e999ull);
  EXPECT_EQ(xxh64("a", 1), 0xd24ec4f1a98c6e5bull);
  EXPECT_EQ(xxh64("abc", 3), 0x44bc2cf5ad770999ull);
  EXPECT_EQ(xxh64("abc", 3, 42), 0x13c1d910702770e6ull);
  std::string s;
  for (int i = 0; i < 3; ++i) s += "0123456789abcdefghijklmnopqrstuvwxyz";
  EXPECT_EQ(xxh64(s.data(), s.size()), 0x0546b527f5bd1589ull);
  EXPECT_EQ(xxh64(s.data(), s.size(), 42), 0x26ab7da16baab107ull);
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(xxh64(all.data(), all.size()), 0x1facbe8406cd904bull);
  // Streaming in awkward pieces gives the one-shot value.
  for (std::size_t piece : {1u, 3u, 7u, 31u, 32u, 33u, 100u}) {
    Xxh64 h;
    for (std::size_t i = 0; i < all.size(); i += piece)
      h.update(all.data() + i, std::min(piece, all.size() - i));
    EXPECT_EQ(h.digest(), 0x1facbe8406cd904bull) << "piece " << piece;
  }
}

// ---- round trips ---------------------------------------------------------------------------

TEST(Safetensors, RoundTripsEveryDtypeShapeAndMetadata) {
  TempDir dir;
  TensorMap t = numpy_compatible_tensors();
  t["bf16"] = (at::arange(9, at::kFloat) / 3).to(at::kBFloat16).view({3, 3});
  t["f8e4m3"] = at::arange(4, at::kFloat).to(at::kFloat8_e4m3fn);
  t["f8e5m2"] = at::arange(4, at::kFloat).to(at::kFloat8_e5m2);
  t["bf16_scalar"] = at::scalar_tensor(-2, at::kBFloat16);
  const StringMap meta = {{"step", "12"}, {"note", "h\xC3\xA9 \"quoted\""}};
  const fs::path path = dir.path / "x.safetensors";
  const FileDigest d = write_safetensors(path.string(), t, meta);
  const std::string bytes = read_bytes(path);
  EXPECT_EQ(d.bytes, static_cast<std::int64_t>(bytes.size()));
  EXPECT_EQ(d.xxh64, xxh64(bytes.data(), bytes.size()));
  const FileDigest again = digest_file(path.string());
  EXPECT_EQ(again.bytes, d.bytes);
  EXPECT_EQ(again.xxh64, d.xxh64);
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);  // data starts 8-aligned

  const SafetensorsContents c = read_safetensors(path.string());
  EXPECT_EQ(c.metadata, meta);
  ASSERT_EQ(c.tensors.size(), t.size());
  for (const auto& [name, want] : t) {
    ASSERT_TRUE(c.tensors.count(name)) << name;
    EXPECT_TRUE(same_bytes(c.tensors.at(name), want)) << name;
  }
  EXPECT_EQ(c.tensors.at("scalar").dim(), 0);
  EXPECT_EQ(c.tensors.at("empty2d").sizes(), (std::vector<std::int64_t>{3, 0}));
}

TEST(Safetensors, WriterRefusesWhatItCannotStore) {
  TempDir dir;
  const std::string p = (dir.path / "x.safetensors").string();
  expect_invalid(
      [&] {
        write_safetensors(p, {{"c", at::ones({2}, at::kComplexFloat)}});
      },
      "cannot be stored in safetensors");
  expect_invalid(
      [&] {
        write_safetensors(p, {{"t", at::ones({3, 4}).t()}});
      },
      "tensor 't' is not contiguous");
  expect_invalid([&] { write_safetensors(p, {{"__metadata__", at::ones({1})}}); }, "reserved");
  expect_invalid([&] { write_safetensors(p, {{"u", at::Tensor()}}); }, "tensor 'u' is undefined");
}

// ---- Python interop --------------------------------------------------------------------------

TEST(Safetensors, PythonSafetensorsReadsOurFiles) {
  if (!fs::exists(kPython)) GTEST_SKIP() << kPython << " not found (scripts/setup.sh installs it)";
  TempDir dir;
  write_safetensors((dir.path / "np.safetensors").string(), numpy_compatible_tensors(),
                    {{"k", "v"}});
  write_safetensors((dir.path / "bf.safetensors").string(),
                    {{"bf16", (at::arange(9, at::kFloat) / 3).to(at::kBFloat16).view({3, 3})}});
  const std::string code = R"PY(
import json, sys, numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
d = load_file(sys.argv[0].replace("check.py", "np.safetensors"))
exp = {
  "f64": np.arange(6, dtype=np.float64).reshape(2, 3) * 0.25,
  "f32": np.arange(5, dtype=np.float32) * -1.5,
  "f16": np.arange(4, dtype=np.float16) / np.float16(8),
  "i64": np.arange(3, dtype=np.int64) * (1 << 40),
  "i32": np.arange(7, dtype=np.int32) - 3,
  "i16": np.arange(2, dtype=np.int16),
  "i8": np.arange(3, dtype=np.int8) - 1,
  "u8": np.arange(250, 256, dtype=np.uint8),
  "bool": np.array([True, False, True]),
  "scalar": np.array(3.5, dtype=np.float32),
  "empty": np.zeros((0,), dtype=np.float32),
  "empty2d": np.zeros((3, 0), dtype=np.int64),
}
assert sorted(d) == sorted(exp), (sorted(d), sorted(exp))
for k, v in exp.items():
    assert d[k].dtype == v.dtype and d[k].shape == v.shape and (d[k] == v).all(), (k, d[k], v)
with safe_open(sys.argv[0].replace("check.py", "np.safetensors"), framework="numpy") as f:
    assert f.metadata() == {"k": "v"}, f.metadata()
try:
    import torch
    from safetensors.torch import load_file as tload
    b = tload(sys.argv[0].replace("check.py", "bf.safetensors"))["bf16"]
    assert b.dtype == torch.bfloat16 and b.shape == (3, 3)
    assert torch.equal(b, (torch.arange(9, dtype=torch.float32) / 3).to(torch.bfloat16).view(3, 3))
    print("bf16 checked with torch")
except ImportError:
    print("torch not installed: bf16 checked by the C++ round trip only")
print("ok")
)PY";
  const auto [rc, out] = run_python(dir.path, code);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("ok"), std::string::npos) << out;
}

TEST(Safetensors, ReadsFilesWrittenByPython) {
  if (!fs::exists(kPython)) GTEST_SKIP() << kPython << " not found (scripts/setup.sh installs it)";
  TempDir dir;
  const std::string code = R"PY(
import sys, numpy as np
from safetensors.numpy import save_file
save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.array([7, -8], dtype=np.int64),
           "h": np.arange(3, dtype=np.float16), "z": np.zeros((0, 2), dtype=np.float64)},
          sys.argv[0].replace("check.py", "py.safetensors"), metadata={"from": "python"})
print("ok")
)PY";
  const auto [rc, out] = run_python(dir.path, code);
  ASSERT_EQ(rc, 0) << out;
  const SafetensorsContents c = read_safetensors((dir.path / "py.safetensors").string());
  EXPECT_EQ(c.metadata, (StringMap{{"from", "python"}}));
  EXPECT_TRUE(at::equal(c.tensors.at("w"), at::arange(12, at::kFloat).view({3, 4})));
  EXPECT_TRUE(at::equal(c.tensors.at("n"), at::tensor({7, -8}, at::kLong)));
  EXPECT_TRUE(at::equal(c.tensors.at("h"), at::arange(3, at::kHalf)));
  EXPECT_EQ(c.tensors.at("z").sizes(), (std::vector<std::int64_t>{0, 2}));
}

// ---- corrupt files ---------------------------------------------------------------------------

TEST(Safetensors, RefusesTruncatedFiles) {
  TempDir dir;
  const fs::path p = dir.path / "x.safetensors";
  write_safetensors(p.string(), {{"a", at::ones({4})}, {"b", at::ones({2}, at::kLong)}});
  const std::string bytes = read_bytes(p);
  write_bytes(p, bytes.substr(0, bytes.size() - 1));
  expect_invalid([&] { read_safetensors(p.string()); }, "beyond the data section");
  write_bytes(p, bytes.substr(0, 20));
  expect_invalid([&] { read_safetensors(p.string()); }, "exceeds the 12 bytes after it");
  write_bytes(p, bytes.substr(0, 5));
  expect_invalid([&] { read_safetensors(p.string()); }, "5 bytes is too short");
  write_bytes(p, bytes + "xx");
  expect_invalid([&] { read_safetensors(p.string()); }, "(trailing bytes)");
}

TEST(Safetensors, RefusesBadHeaderLength) {
  TempDir dir;
  const fs::path p = dir.path / "x.safetensors";
  write_safetensors(p.string(), {{"a", at::ones({4})}});
  std::string bytes = read_bytes(p);
  bytes[7] = '\x7f';  // header length ~ 9e18
  write_bytes(p, bytes);
  expect_invalid([&] { read_safetensors(p.string()); }, "must be in [2, 100000000]");
  bytes = read_bytes(p);
  std::memset(bytes.data(), 0, 8);
  write_bytes(p, bytes);
  expect_invalid([&] { read_safetensors(p.string()); }, "header length 0 must be in");
}

TEST(Safetensors, RefusesBitFlipsInTheHeader) {
  TempDir dir;
  const fs::path p = dir.path / "x.safetensors";
  write_safetensors(p.string(), {{"a", at::ones({4})}});
  const std::string good = read_bytes(p);
  std::string bad = good;
  bad[8] ^= 0x01;  // '{' -> 'z'
  write_bytes(p, bad);
  expect_invalid([&] { read_safetensors(p.string()); }, "header does not start with '{'");
  bad = good;
  bad[good.find("\"shape\"") + 1] ^= 0x20;  // "shape" -> "Shape"
  write_bytes(p, bad);
  expect_invalid([&] { read_safetensors(p.string()); }, "tensor 'a' has no shape array");
  bad = good;
  bad[good.find("F32") + 2] = '3';  // "F32" -> "F33"
  write_bytes(p, bad);
  expect_invalid([&] { read_safetensors(p.string()); }, "tensor 'a' has unknown dtype 'F33'");
  bad = good;
  bad[good.find("]") - 1] = '\x01';  // control character inside the JSON
  write_bytes(p, bad);
  expect_invalid([&] { read_safetensors(p.string()); }, "header is not valid JSON");
}

TEST(Safetensors, RefusesInconsistentEntries) {
  TempDir dir;
  const fs::path p = dir.path / "x.safetensors";
  write_raw(
      p,
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      12);
  expect_invalid([&] { read_safetensors(p.string()); }, "tensors 'a' and 'b' overlap");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
  expect_invalid([&] { read_safetensors(p.string()); }, "gap of 4 bytes before tensor 'a'");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8);
  expect_invalid([&] { read_safetensors(p.string()); },
                 "shape [3] F32 needs 12 bytes but data_offsets span 8");
  write_raw(p, R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", 8);
  expect_invalid([&] { read_safetensors(p.string()); }, "tensor 'a' has unknown dtype 'Q7'");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8);
  expect_invalid([&] { read_safetensors(p.string()); }, "must hold non-negative integers");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8);
  expect_invalid([&] { read_safetensors(p.string()); }, "end before begin");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":3}})",
            8);
  expect_invalid([&] { read_safetensors(p.string()); },
                 "__metadata__ value of 'k' is not a string");
  write_raw(p, R"([1,2])", 0);
  expect_invalid([&] { read_safetensors(p.string()); }, "header does not start with '{'");
  // A well-formed hand-made file is accepted.
  write_raw(
      p,
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[0],"data_offsets":[8,8]}})",
      8);
  EXPECT_EQ(read_safetensors(p.string()).tensors.size(), 2u);
}

}  // namespace
}  // namespace stp::checkpoint
