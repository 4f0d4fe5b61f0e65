#include "checkpoint/checkpoint.h"

#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/check.h"
#include "schedule/generators.h"

namespace stp::checkpoint {
namespace fs = std::filesystem;
namespace {

constexpr int kMaxKeepLast = 1'000'000;
constexpr const char* kManifest = "manifest.json";
constexpr const char* kTmpSuffix = ".tmp";

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::runtime_error(str_cat(what, ": ", std::strerror(errno)));
}

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_errno("opening folder " + dir.string());
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  errno = err;
  if (rc != 0 && errno != EINVAL) throw_errno("fsync folder " + dir.string());
}

// Writes `text` to path.part, fsyncs it and renames it to `path`.
void write_file_atomic(const fs::path& path, const std::string& text) {
  const fs::path part = path.string() + ".part";
  const int fd = ::open(part.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw_errno("creating " + part.string());
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      const int err = errno;
      ::close(fd);
      errno = err;
      throw_errno("writing " + part.string());
    }
    done += static_cast<std::size_t>(w);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    errno = err;
    throw_errno("fsync " + part.string());
  }
  ::close(fd);
  fs::rename(part, path);
}

// Note [No std::filesystem::remove_all]
// libtorch.so exports its own copy of std::filesystem's free functions (from the older libstdc++
// it was built with), and the dynamic linker binds ours to it. Its remove_all crashes (a call
// through a null pointer), so trees are removed with POSIX nftw instead.
int remove_entry(const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }

void remove_tree(const fs::path& path) {
  if (::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT) {
    throw_errno("removing " + path.string());
  }
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  STP_CHECK(in.good(), path.string(), ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return std::move(ss).str();
}

std::string hex64(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string shard_name(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "rank_%05d.safetensors", rank);
  return buf;
}

// The step of a folder named step_<digits>, or -1.
std::int64_t parse_step(const std::string& name) {
  if (name.size() <= 5 || name.size() > 5 + 18 || name.compare(0, 5, "step_") != 0) return -1;
  std::int64_t step = 0;
  for (std::size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

nlohmann::json layout_json(const CheckpointLayout& l) {
  return {{"dp", l.dp},
          {"pp", l.pp},
          {"tp", l.tp},
          {"world", l.world},
          {"schedule", l.schedule},
          {"microbatches", l.microbatches},
          {"chunks", chunks_of(l)},
          {"rank_order", "rank = (pp * dp_size + dp) * tp_size + tp"}};
}

template <typename T>
T field(const nlohmann::json& j, const char* key, const std::string& where) {
  STP_CHECK(j.is_object() && j.contains(key), where, ": missing field '", key, "'");
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    STP_CHECK(false, where, ": field '", key, "' has the wrong type: ", j.at(key).dump());
  }
  return T{};
}

// A manifest's layout.chunks; one written before the layout had it: extra.schedule.chunks for
// 1f1b-i (Note [Chunks in the layout]), else 0 (the kind's default).
int saved_chunks(const nlohmann::json& layout, const nlohmann::json& extra, const std::string& lw) {
  int chunks = 0;
  if (layout.contains("chunks")) {
    chunks = field<int>(layout, "chunks", lw);
  } else if (layout.value("schedule", std::string()) == "1f1b-i" && extra.is_object() &&
             extra.contains("schedule") && extra["schedule"].is_object() &&
             extra["schedule"].contains("chunks")) {
    chunks = field<int>(extra["schedule"], "chunks", lw + " (extra.schedule)");
  } else {
    return 0;
  }
  STP_CHECK(chunks >= 1, lw, ": chunks=", chunks, " must be >= 1");
  return chunks;
}

// One side of layout_change: tp, pp and dp unless only the chunks change, then the schedule
// and the chunks when they change.
std::string describe(const CheckpointLayout& l, bool shape, bool schedule, bool chunks) {
  std::string out = shape ? str_cat("tp=", l.tp, " pp=", l.pp, " dp=", l.dp) : std::string();
  if (schedule) out += " schedule=" + l.schedule;
  if (chunks) out += str_cat(out.empty() ? "" : " ", "schedule.chunks=", chunks_of(l));
  return out;
}

// Appends "model.a.b=X in checkpoint, Y in this run" for every leaf that differs.
void diff_json(const std::string& path, const nlohmann::json& saved, const nlohmann::json& now,
               std::vector<std::string>& out) {
  if (saved.is_object() && now.is_object()) {
    std::vector<std::string> keys;
    for (auto it = saved.begin(); it != saved.end(); ++it) keys.push_back(it.key());
    for (auto it = now.begin(); it != now.end(); ++it)
      if (!saved.contains(it.key())) keys.push_back(it.key());
    for (const std::string& k : keys) {
      const std::string sub = path + "." + k;
      if (!saved.contains(k)) {
        out.push_back(str_cat(sub, " absent in checkpoint, ", now[k].dump(), " in this run"));
      } else if (!now.contains(k)) {
        out.push_back(str_cat(sub, "=", saved[k].dump(), " in checkpoint, absent in this run"));
      } else {
        diff_json(sub, saved[k], now[k], out);
      }
    }
  } else if (saved != now) {
    out.push_back(str_cat(path, "=", saved.dump(), " in checkpoint, ", now.dump(), " in this run"));
  }
}

// Deletes a checkpoint folder so that a crash midway leaves only an ignored *.tmp folder.
void remove_checkpoint(const fs::path& dir) {
  const fs::path doomed = dir.string() + ".old" + kTmpSuffix;  // never the name save() writes
  remove_tree(doomed);
  fs::rename(dir, doomed);
  remove_tree(doomed);
}

// Phase 2 of Note [Checkpoint atomicity] for one rank: rank_R.safetensors and its .sum.
void write_rank_shard(const fs::path& tmp_dir, std::int64_t step, int rank, int world,
                      const TensorMap& tensors) {
  const std::string name = shard_name(rank);
  const StringMap metadata = {{"format", "stp-checkpoint"},
                              {"step", std::to_string(step)},
                              {"rank", std::to_string(rank)},
                              {"world", std::to_string(world)}};
  const fs::path shard = tmp_dir / name;
  const FileDigest digest = write_safetensors(shard.string() + ".part", tensors, metadata);
  fs::rename(shard.string() + ".part", shard);
  const nlohmann::json sum = {{"bytes", digest.bytes}, {"xxh64", hex64(digest.xxh64)}};
  write_file_atomic(tmp_dir / (name + ".sum"), sum.dump());
}

// Phase 3 of Note [Checkpoint atomicity] up to the rename of tmp_dir to final_dir (the caller
// fsyncs final_dir's parent): checks every shard, writes the manifest last.
void publish(const fs::path& tmp_dir, const fs::path& final_dir, std::int64_t step,
             const CheckpointInfo& info) {
  const int world = info.layout.world;
  nlohmann::json files = nlohmann::json::array();
  for (int r = 0; r < world; ++r) {
    const std::string rname = shard_name(r);
    const fs::path sum_path = tmp_dir / (rname + ".sum");
    STP_CHECK(fs::exists(sum_path), "checkpoint step ", step, ": rank ", r,
              " did not write its shard (", sum_path.string(), " missing)");
    const nlohmann::json s = nlohmann::json::parse(read_text(sum_path));
    const auto bytes = field<std::int64_t>(s, "bytes", sum_path.string());
    const auto on_disk = static_cast<std::int64_t>(fs::file_size(tmp_dir / rname));
    STP_CHECK(on_disk == bytes, "checkpoint step ", step, ": ", rname, " has ", on_disk,
              " bytes on disk but its rank wrote ", bytes);
    const RankCoords at = rank_coords(info.layout, r);
    files.push_back({{"name", rname},
                     {"rank", r},
                     {"pp", at.pp},
                     {"dp", at.dp},
                     {"tp", at.tp},
                     {"bytes", bytes},
                     {"xxh64", field<std::string>(s, "xxh64", sum_path.string())}});
  }
  const nlohmann::json manifest = {{"format", "stp-checkpoint"},
                                   {"format_version", kCheckpointFormatVersion},
                                   {"step", step},
                                   {"created_unix", static_cast<std::int64_t>(std::time(nullptr))},
                                   {"layout", layout_json(info.layout)},
                                   {"model", info.model},
                                   {"data", info.data},
                                   {"extra", info.extra},
                                   {"checksum", "xxh64"},
                                   {"files", files}};
  write_file_atomic(tmp_dir / kManifest, manifest.dump(2) + "\n");
  for (int r = 0; r < world; ++r) fs::remove(tmp_dir / (shard_name(r) + ".sum"));
  fsync_dir(tmp_dir);
  if (fs::exists(final_dir)) remove_checkpoint(final_dir);  // re-saving the same step
  fs::rename(tmp_dir, final_dir);
}

}  // namespace

int chunks_of(const CheckpointLayout& layout) {
  if (layout.chunks != 0) return layout.chunks;
  return schedule::default_chunks(schedule::kind_from_string(layout.schedule));
}

bool CheckpointLayout::operator==(const CheckpointLayout& o) const {
  return dp == o.dp && pp == o.pp && tp == o.tp && world == o.world && schedule == o.schedule &&
         microbatches == o.microbatches && (chunks == o.chunks || chunks_of(*this) == chunks_of(o));
}

std::string layout_change(const CheckpointLayout& saved, const CheckpointLayout& now) {
  const bool shape =
      saved.tp != now.tp || saved.pp != now.pp || saved.dp != now.dp || saved.world != now.world;
  const bool schedule = saved.schedule != now.schedule;
  // A V-shaped kind's 2 follows from its name: only 1f1b-i's chunks are a choice worth naming.
  const bool chunks = chunks_of(saved) != chunks_of(now) &&
                      (!schedule || saved.schedule == "1f1b-i" || now.schedule == "1f1b-i");
  if (!shape && !schedule && !chunks) return "";
  return str_cat(describe(saved, shape || schedule, schedule, chunks), " into ",
                 describe(now, shape || schedule, schedule, chunks));
}

RankCoords rank_coords(const CheckpointLayout& layout, int rank) {
  STP_CHECK(layout.dp >= 1 && layout.pp >= 1 && layout.tp >= 1 &&
                layout.world == layout.dp * layout.pp * layout.tp,
            "checkpoint layout dp=", layout.dp, " pp=", layout.pp, " tp=", layout.tp,
            " does not multiply to world=", layout.world);
  STP_CHECK(rank >= 0 && rank < layout.world, "rank ", rank, " is out of range [0, ", layout.world,
            ")");
  return {rank / (layout.tp * layout.dp), (rank / layout.tp) % layout.dp, rank % layout.tp};
}

std::string checkpoint_dir_name(std::int64_t step) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "step_%06lld", static_cast<long long>(step));
  return buf;
}

CheckpointWriter::CheckpointWriter(const CheckpointOptions& options, int rank, int world,
                                   std::function<void()> barrier)
    : options_(options), rank_(rank), world_(world), barrier_(std::move(barrier)) {
  STP_CHECK(!options_.dir.empty(), "checkpoint dir must not be empty");
  STP_CHECK(world_ >= 1 && world_ <= 99999, "checkpoint world=", world_, " must be in [1, 99999]");
  STP_CHECK(rank_ >= 0 && rank_ < world_, "checkpoint rank=", rank_,
            " must be in [0, world=", world_, ")");
  STP_CHECK(options_.keep_last >= 1 && options_.keep_last <= kMaxKeepLast,
            "checkpoint keep_last=", options_.keep_last, " must be in [1, ", kMaxKeepLast, "]");
  STP_CHECK(static_cast<bool>(barrier_), "checkpoint barrier function is empty");
}

std::string CheckpointWriter::save(std::int64_t step, const TensorMap& tensors,
                                   const CheckpointInfo& info) {
  STP_CHECK(step >= 0, "checkpoint step=", step, " must be >= 0");
  STP_CHECK(info.layout.world == world_, "checkpoint layout world=", info.layout.world,
            " differs from the writer's world=", world_);
  STP_CHECK(info.model.is_object(), "checkpoint model config must be a JSON object, got ",
            info.model.dump());
  const fs::path root(options_.dir);
  const fs::path final_dir = root / checkpoint_dir_name(step);
  const fs::path tmp_dir = root / (checkpoint_dir_name(step) + kTmpSuffix);

  // Phase 1: rank 0 prepares an empty temporary folder.
  if (rank_ == 0) {
    fs::create_directories(root);
    remove_tree(tmp_dir);
    fs::create_directory(tmp_dir);
  }
  barrier_();

  // Phase 2: every rank writes its shard and its .sum (size and checksum) atomically.
  write_rank_shard(tmp_dir, step, rank_, world_, tensors);
  barrier_();

  // Phase 3: rank 0 checks every shard, writes the manifest last and publishes the folder.
  if (rank_ == 0) {
    publish(tmp_dir, final_dir, step, info);
    fsync_dir(root);

    // Retention: this checkpoint plus the keep_last-1 newest others; stale *.tmp folders go too.
    std::vector<std::string> complete = list_complete(root.string());
    std::erase(complete, final_dir.string());
    const std::size_t keep_others = static_cast<std::size_t>(options_.keep_last - 1);
    for (std::size_t i = 0; i + keep_others < complete.size(); ++i) remove_checkpoint(complete[i]);
    for (const fs::directory_entry& e : fs::directory_iterator(root)) {
      const std::string n = e.path().filename().string();
      if (e.is_directory() && n.starts_with("step_") && n.ends_with(kTmpSuffix)) {
        remove_tree(e.path());
      }
    }
  }
  barrier_();
  return final_dir.string();
}

std::string write_checkpoint(const std::string& final_dir, std::int64_t step,
                             const CheckpointInfo& info,
                             const std::function<TensorMap(int rank)>& tensors_of) {
  STP_CHECK(step >= 0, "checkpoint step=", step, " must be >= 0");
  rank_coords(info.layout, 0);  // checks the layout multiplies out
  fs::path final_path = fs::absolute(final_dir).lexically_normal();
  if (!final_path.has_filename()) final_path = final_path.parent_path();  // "DIR2/"
  const fs::path root = final_path.parent_path();
  STP_CHECK(!fs::exists(final_path), final_dir, " already exists (choose a new folder)");
  const fs::path tmp_dir = final_path.string() + kTmpSuffix;
  fs::create_directories(root);
  remove_tree(tmp_dir);
  fs::create_directory(tmp_dir);
  for (int r = 0; r < info.layout.world; ++r)
    write_rank_shard(tmp_dir, step, r, info.layout.world, tensors_of(r));
  publish(tmp_dir, final_path, step, info);
  fsync_dir(root);
  return final_path.string();
}

Manifest read_manifest(const std::string& checkpoint) {
  const fs::path path = fs::path(checkpoint) / kManifest;
  const std::string where = path.string();
  STP_CHECK(fs::exists(path), where, " does not exist (not a complete checkpoint)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text(path));
  } catch (const nlohmann::json::exception& e) {
    STP_CHECK(false, where, " is not valid JSON: ", e.what());
  }
  STP_CHECK(j.is_object() && j.value("format", "") == "stp-checkpoint", where,
            " is not an stp checkpoint manifest (\"format\" must be \"stp-checkpoint\")");
  Manifest m;
  m.format_version = field<int>(j, "format_version", where);
  STP_CHECK(m.format_version >= 1 && m.format_version <= kCheckpointFormatVersion, where,
            ": format_version=", m.format_version, " must be in [1, ", kCheckpointFormatVersion,
            "] (written by a newer stp?)");
  m.step = field<std::int64_t>(j, "step", where);
  const std::string lw = where + " layout";
  const nlohmann::json& l = j.contains("layout") ? j["layout"] : nlohmann::json();
  m.info.model = field<nlohmann::json>(j, "model", where);
  m.info.data = field<nlohmann::json>(j, "data", where);
  m.info.extra = j.value("extra", nlohmann::json::object());
  m.info.layout = {field<int>(l, "dp", lw),
                   field<int>(l, "pp", lw),
                   field<int>(l, "tp", lw),
                   field<int>(l, "world", lw),
                   field<std::string>(l, "schedule", lw),
                   field<int>(l, "microbatches", lw),
                   saved_chunks(l, m.info.extra, lw)};
  m.info.layout.chunks = chunks_of(m.info.layout);  // also checks the schedule kind
  STP_CHECK(field<std::string>(j, "checksum", where) == "xxh64", where,
            ": checksum kind must be \"xxh64\"");
  const nlohmann::json files = field<nlohmann::json>(j, "files", where);
  const int world = m.info.layout.world;
  STP_CHECK(world >= 1 && files.is_array() && static_cast<int>(files.size()) == world, where,
            ": needs one file per rank (world=", world, "), has ", files.size());
  for (int r = 0; r < world; ++r) {
    const nlohmann::json& f = files[static_cast<std::size_t>(r)];
    CheckpointFile cf;
    cf.name = field<std::string>(f, "name", where);
    cf.rank = field<int>(f, "rank", where);
    cf.bytes = field<std::int64_t>(f, "bytes", where);
    const std::string hex = field<std::string>(f, "xxh64", where);
    STP_CHECK(cf.rank == r && cf.name == shard_name(r), where, ": file ", r, " is '", cf.name,
              "' of rank ", cf.rank, ", expected '", shard_name(r), "'");
    STP_CHECK(hex.size() == 16 && hex.find_first_not_of("0123456789abcdef") == std::string::npos,
              where, ": xxh64 of ", cf.name, " is '", hex, "', not 16 hex digits");
    cf.xxh64 = std::stoull(hex, nullptr, 16);
    m.files.push_back(cf);
  }
  return m;
}

std::vector<std::string> list_complete(const std::string& dir) {
  std::vector<std::pair<std::int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    const std::int64_t step = parse_step(e.path().filename().string());
    if (step < 0 || !e.is_directory()) continue;
    try {
      if (read_manifest(e.path().string()).step == step)
        found.emplace_back(step, e.path().string());
    } catch (const std::exception&) {
      // Incomplete or foreign folder: not a checkpoint we can resume from.
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

std::optional<std::string> find_latest_complete(const std::string& dir) {
  std::vector<std::string> all = list_complete(dir);
  if (all.empty()) return std::nullopt;
  return all.back();
}

std::string resolve_checkpoint(const std::string& path) {
  if (fs::exists(fs::path(path) / kManifest)) return path;
  std::optional<std::string> latest = find_latest_complete(path);
  STP_CHECK(latest.has_value(), "--checkpoint ", path,
            " is neither a checkpoint (no manifest.json) nor a folder holding complete ones");
  return *latest;
}

void check_compatible(const Manifest& manifest, const nlohmann::json& model) {
  // Another family first and alone: every other field would differ too.
  const auto arch = [](const nlohmann::json& m) {
    return m.is_object() ? m.value("arch", std::string("gpt")) : std::string("gpt");
  };
  STP_CHECK(arch(manifest.info.model) == arch(model), "cannot resume from step ", manifest.step,
            ": the checkpoint holds a model.arch=", arch(manifest.info.model),
            " model, this run trains model.arch=", arch(model));
  std::vector<std::string> diffs;
  diff_json("model", manifest.info.model, model, diffs);
  std::string msg;
  for (const std::string& d : diffs) msg += (msg.empty() ? "" : "; ") + d;
  STP_CHECK(diffs.empty(), "cannot resume from step ", manifest.step, ": ", msg);
}

void verify_shard(const std::string& checkpoint, const Manifest& manifest, int rank) {
  const int world = static_cast<int>(manifest.files.size());
  STP_CHECK(rank >= 0 && rank < world, "checkpoint rank=", rank, " must be in [0, world=", world,
            ")");
  const CheckpointFile& f = manifest.files[static_cast<std::size_t>(rank)];
  const fs::path path = fs::path(checkpoint) / f.name;
  STP_CHECK(fs::exists(path), path.string(), " is missing: checkpoint incomplete");
  const FileDigest d = digest_file(path.string());
  STP_CHECK(d.bytes == f.bytes, f.name, " is ", d.bytes, " bytes, the manifest says ", f.bytes,
            ": file truncated, or file or manifest corrupt (", checkpoint, ")");
  // The manifest may be what changed: the mismatch cannot tell which of the two is wrong.
  STP_CHECK(d.xxh64 == f.xxh64, f.name, " checksum mismatch: file or manifest corrupt (xxh64 ",
            hex64(d.xxh64), ", manifest ", hex64(f.xxh64), "; ", checkpoint, ")");
}

TensorMap load_shard(const std::string& checkpoint, const Manifest& manifest, int rank) {
  verify_shard(checkpoint, manifest, rank);
  const CheckpointFile& f = manifest.files[static_cast<std::size_t>(rank)];
  SafetensorsContents c = read_safetensors((fs::path(checkpoint) / f.name).string());
  const auto it = c.metadata.find("rank");
  STP_CHECK(it != c.metadata.end() && it->second == std::to_string(rank), f.name, " holds rank ",
            it == c.metadata.end() ? "?" : it->second, ", expected ", rank);
  return std::move(c.tensors);
}

LoadedCheckpoint load_checkpoint(const std::string& checkpoint, int rank,
                                 const CheckpointLayout& layout, const nlohmann::json& model) {
  LoadedCheckpoint out;
  out.manifest = read_manifest(checkpoint);
  check_compatible(out.manifest, model);
  const std::string change = layout_change(out.manifest.info.layout, layout);
  STP_CHECK(change.empty(), "checkpoint ", checkpoint, " was saved in another layout (", change,
            "): its shards need resharding. stp train --resume / --resume-from reshards on load; "
            "stp checkpoint reshard writes a copy in this layout (checkpoint/reshard.h)");
  out.tensors = load_shard(checkpoint, out.manifest, rank);
  return out;
}

void verify_checkpoint(const std::string& checkpoint) {
  const Manifest m = read_manifest(checkpoint);
  for (int r = 0; r < static_cast<int>(m.files.size()); ++r) load_shard(checkpoint, m, r);
}

}  // namespace stp::checkpoint
