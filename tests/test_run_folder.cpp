// Run folders: the writer's lock, refusing to train over a run, --force's swap, a failed start
// leaving nothing, readers' recovery, checkpoint metadata checks, the trainer's option checks,
// the tokenizer's too-small-corpus error and the progress line's width. (Killing the process
// after each file operation is tests/e2e/abort_every_file_op.sh.)
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "model/checkpoint.h"
#include "model_cases.h"
#include "run/checkpoint.h"
#include "run/run_folder.h"
#include "tensor/error.h"
#include "tensor/safetensors.h"
#include "test_util.h"
#include "text/tokenizer.h"
#include "train/trainer.h"

namespace moe {
namespace {
using test::error_of;
using test::temp_dir;
namespace fs = std::filesystem;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

// A folder that looks like a finished run to the run-folder code (which reads only its names
// and trainer_state.json's step).
void fake_run(const std::string& dir, int64_t step) {
  fs::create_directories(dir);
  write_text(dir + "/trainer_state.json", "{\"step\": " + std::to_string(step) + "}");
  write_text(dir + "/metrics.jsonl", "{\"step\": 1, \"loss\": 5}\n");
}

// A real checkpoint of a small model at `step`.
struct SavedRun {
  ParamStore store;
  std::unique_ptr<Transformer> model;
  std::unique_ptr<AdamW> optimizer;
  SavedRun(const std::string& dir, int64_t step) {
    model =
        std::make_unique<Transformer>(test::load_model_cases().at("moe_every_other").config, store);
    store.allocate();
    Rng rng(3);
    model->init_parameters(rng);
    optimizer = std::make_unique<AdamW>(store, AdamWOptions{});
    save_checkpoint(dir, *model, store, *optimizer, {{"step", step}});
  }
};

TEST(CheckpointStep, NonNumberAndOutOfRangeStepsAreNamedErrors) {
  const std::string dir = temp_dir("step");
  SavedRun run(dir, 3);
  const std::string path = dir + "/model.safetensors";
  const SafetensorsFile good = read_safetensors(path);
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, t] : good.tensors) tensors.emplace(name, t);
  for (const auto& [step, expected] : std::vector<std::pair<std::string, std::string>>{
           {"three", "metadata 'step' is \"three\", expected a non-negative integer"},
           {"3x", "metadata 'step' is \"3x\", expected a non-negative integer"},
           {"-3", "metadata 'step' is \"-3\", expected a non-negative integer"},
           {"", "metadata 'step' is \"\", expected a non-negative integer"},
           {"99999999999999999999", "metadata 'step' \"99999999999999999999\" is out of range"}}) {
    write_safetensors(path, tensors, {{"step", step}});
    const std::string error =
        error_of([&] { load_checkpoint(dir, 3, *run.model, run.store, *run.optimizer); });
    EXPECT_NE(error.find(path + ": " + expected), std::string::npos) << step << ": " << error;
    // A stray .next file with such a step is from a save that never committed: dropped.
    write_safetensors(path + ".next", tensors, {{"step", step}});
    EXPECT_EQ(recover_checkpoint(dir)["step"], 3);
    EXPECT_FALSE(fs::exists(path + ".next"));
  }
}

TEST(RunLock, ASecondWriterIsRefusedNamingTheHolder) {
  const std::string dir = temp_dir("lock");
  RunLock held = RunLock::acquire(dir);
  EXPECT_EQ(read_text(dir + "/run.lock"), std::to_string(::getpid()) + "\n");
  // flock conflicts between two opens of the file even within one process.
  EXPECT_EQ(error_of([&] { RunLock::acquire(dir); }),
            "run folder '" + dir + "' is in use by process " + std::to_string(::getpid()) +
                " (it holds run.lock); wait for it to finish or stop it");
  EXPECT_FALSE(RunLock::try_acquire(dir).has_value());
  { RunLock moved = std::move(held); }  // released here
  EXPECT_TRUE(RunLock::try_acquire(dir).has_value());
}

TEST(RunFolder, TrainingIntoARunIsRefusedInOneLineNamingResumeAndForce) {
  const std::string dir = temp_dir("refuse") + "/run";
  fake_run(dir, 40);
  const std::string metrics = read_text(dir + "/metrics.jsonl");
  EXPECT_EQ(error_of([&] { RunFolder::open_fresh(dir, false); }),
            "'" + dir + "' already holds a run (step 40): continue it with --resume " + dir +
                ", or pass --force to replace it");
  EXPECT_EQ(read_text(dir + "/metrics.jsonl"), metrics);
  // Locked by a writer: refused whatever the options.
  RunLock writer = RunLock::acquire(dir);
  EXPECT_NE(error_of([&] { RunFolder::open_fresh(dir, true); }).find("is in use by process"),
            std::string::npos);
  EXPECT_NE(error_of([&] { RunFolder::open_existing(dir); }).find("is in use by process"),
            std::string::npos);
}

TEST(RunFolder, ForceKeepsTheOldRunUntilTheNewOnesFirstCheckpoint) {
  const std::string dir = temp_dir("force") + "/run";
  fake_run(dir, 40);
  write_text(dir + "/report.html", "old");  // written into the run by `moe report`
  RunFolder folder = RunFolder::open_fresh(dir + "/", true);  // the same folder as `dir`
  EXPECT_EQ(folder.dir(), dir + ".replacing");
  fake_run(folder.dir(), 1);
  // Until then, the folder is the old run, and it is locked.
  EXPECT_EQ(read_text(dir + "/trainer_state.json"), "{\"step\": 40}");
  EXPECT_FALSE(RunLock::try_acquire(dir).has_value());
  folder.checkpoint_saved();
  EXPECT_EQ(folder.dir(), dir);
  EXPECT_EQ(read_text(dir + "/trainer_state.json"), "{\"step\": 1}");
  EXPECT_FALSE(fs::exists(dir + "/report.html"));  // the old run's page went with it
  EXPECT_FALSE(fs::exists(dir + ".replacing"));
  EXPECT_FALSE(RunLock::try_acquire(dir).has_value());  // still ours: the new run's lock
  folder.checkpoint_saved();                            // later checkpoints change nothing
  EXPECT_EQ(read_text(dir + "/trainer_state.json"), "{\"step\": 1}");
}

TEST(RunFolder, AFailedForceRunLeavesTheOldRunAndAStaleStagingFolderIsRemoved) {
  const std::string dir = temp_dir("force_fail") + "/run";
  fake_run(dir, 40);
  {
    RunFolder folder = RunFolder::open_fresh(dir, true);
    fake_run(folder.dir(), 1);
    folder.discard();
  }
  EXPECT_FALSE(fs::exists(dir + ".replacing"));
  EXPECT_EQ(read_text(dir + "/trainer_state.json"), "{\"step\": 40}");
  // A killed --force run's staging folder (nobody holds its lock) goes with the next writer.
  fake_run(dir + ".replacing", 1);
  { RunFolder resumed = RunFolder::open_existing(dir); }
  EXPECT_FALSE(fs::exists(dir + ".replacing"));
}

TEST(RunFolder, AFailedStartRemovesTheFoldersItMade) {
  const std::string root = temp_dir("failed_start");
  {
    RunFolder folder = RunFolder::open_fresh(root + "/a/b/run", false);
    write_text(folder.dir() + "/config.json", "{}");
    folder.discard();
  }
  EXPECT_FALSE(fs::exists(root + "/a"));
  // A folder that existed (empty) stays, emptied.
  fs::create_directories(root + "/empty");
  {
    RunFolder folder = RunFolder::open_fresh(root + "/empty", false);
    write_text(folder.dir() + "/config.json", "{}");
    folder.discard();
  }
  EXPECT_TRUE(fs::exists(root + "/empty"));
  EXPECT_TRUE(fs::is_empty(root + "/empty"));
}

TEST(RunFolder, AStartThatNeverCheckpointedIsClearedAForeignFolderRefused) {
  const std::string root = temp_dir("unfinished");
  const std::string dir = root + "/run";
  fs::create_directories(dir + "/data");
  write_text(dir + "/config.json", "{}");
  write_text(dir + "/tokenizer.model", "old");
  write_text(dir + "/model.safetensors.next.tmp", "");
  {
    RunFolder folder = RunFolder::open_fresh(dir, false);
    EXPECT_EQ(folder.dir(), dir);
  }
  EXPECT_FALSE(fs::exists(dir + "/tokenizer.model"));
  EXPECT_FALSE(fs::exists(dir + "/data"));
  const std::string mine = temp_dir("not_a_run");
  write_text(mine + "/notes.txt", "mine");
  EXPECT_EQ(error_of([&] { RunFolder::open_fresh(mine, true); }),
            "'" + mine +
                "' is not empty and holds no run (it has 'notes.txt'); choose another --out or "
                "empty it");
  EXPECT_TRUE(fs::exists(mine + "/notes.txt"));
  EXPECT_FALSE(fs::exists(mine + "/run.lock"));
}

TEST(RecoverForReading, FinishesAnInterruptedSaveUnlessAWriterHoldsTheFolder) {
  const std::string dir = temp_dir("reader");
  SavedRun run(dir, 4);
  // Killed after the commit, before the renames.
  fs::rename(dir + "/model.safetensors", dir + "/model.safetensors.next");
  {
    RunLock writer = RunLock::acquire(dir);
    recover_for_reading(dir);  // a writer's folder is the writer's to finish
    EXPECT_TRUE(fs::exists(dir + "/model.safetensors.next"));
  }
  recover_for_reading(dir);
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors.next"));
  EXPECT_NO_THROW(load_model(dir));
  // A folder that is not a run is left alone (no lock file appears).
  const std::string plain = temp_dir("reader_plain");
  recover_for_reading(plain);
  EXPECT_TRUE(fs::is_empty(plain));
}

TEST(TrainOptions, NonPositiveSizesAndBadSchedulesNameTheirOption) {
  auto error_with = [](const std::function<void(TrainOptions&)>& change) {
    TrainOptions o;
    change(o);
    return error_of([&] { validate_train_options(o); });
  };
  EXPECT_EQ(error_with([](TrainOptions&) {}), "");
  EXPECT_EQ(error_with([](TrainOptions& o) { o.steps = 0; }), "--steps must be positive, got 0");
  EXPECT_EQ(error_with([](TrainOptions& o) { o.batch_size = -2; }),
            "--batch-size must be positive, got -2");
  EXPECT_EQ(error_with([](TrainOptions& o) { o.seq_len = 1; }),
            "--seq-len must be at least 2, got 1");
  EXPECT_EQ(error_with([](TrainOptions& o) { o.warmup = -1; }),
            "--warmup must not be negative, got -1");
  EXPECT_NE(error_with([](TrainOptions& o) { o.min_lr = 1; }).find("--min-lr must lie in"),
            std::string::npos);
  EXPECT_NE(error_with([](TrainOptions& o) { o.lr = std::nanf(""); }).find("--lr must be"),
            std::string::npos);
  EXPECT_EQ(error_with([](TrainOptions& o) { o.vocab_size = 100; }),
            "--vocab-size must lie in [256, 65536], got 100");
}

TEST(TrainOptions, AFailedStartLeavesNoFolder) {
  const std::string root = temp_dir("train_fails");
  TrainOptions o;
  o.out_dir = root + "/runs/x";
  o.config = root + "/missing.json";
  EXPECT_NE(error_of([&] { train(o); }).find("missing.json"), std::string::npos);
  o.config = "";
  o.corpus = root + "/missing.jsonl.gz";
  EXPECT_NE(error_of([&] { train(o); }).find("missing.jsonl.gz"), std::string::npos);
  // A corpus that exists but is not one fails after the folder was made: it goes too.
  write_text(root + "/bad.jsonl.gz", "not gzip json");
  o.corpus = root + "/bad.jsonl.gz";
  EXPECT_NE(error_of([&] { train(o); }), "");
  EXPECT_FALSE(fs::exists(root + "/runs"));
}

TEST(Tokenizer, TooSmallACorpusSaysHowManyPiecesItCanMake) {
  const std::string dir = temp_dir("small_corpus");
  const std::vector<std::string> texts = {"a tiny corpus", "with two documents"};
  TokenizerTrainOptions o;
  o.vocab_size = 4096;
  try {
    Tokenizer::train(texts, o, dir + "/tok.model");
    FAIL() << "trained a 4096-piece vocabulary on two sentences";
  } catch (const VocabularyTooLarge& e) {
    EXPECT_EQ(e.requested, 4096);
    EXPECT_GT(e.max_pieces, 0);
    EXPECT_LT(e.max_pieces, 4096);
  }
  EXPECT_FALSE(fs::exists(dir + "/tok.model"));
}

TEST(Tokenizer, TooSmallAVocabularyForTheCharactersSaysTheLeastItNeeds) {
  const std::string dir = temp_dir("many_characters");
  std::string text;  // 300 distinct characters, beyond the 256 byte pieces of a 300-piece model
  for (char32_t c = 0x100; c < 0x100 + 300; ++c) {
    text += static_cast<char>(0xC0 | (c >> 6));
    text += static_cast<char>(0x80 | (c & 0x3F));
    text += ' ';
  }
  const std::vector<std::string> texts(20, text);
  TokenizerTrainOptions o;
  o.vocab_size = 300;
  const std::string error = error_of([&] { Tokenizer::train(texts, o, dir + "/tok.model"); });
  EXPECT_NE(error.find("300-piece vocabulary is too small"), std::string::npos) << error;
  EXPECT_NE(error.find("pass --vocab-size"), std::string::npos) << error;
  EXPECT_FALSE(fs::exists(dir + "/tok.model"));
}

TEST(ProgressLine, FitsTheWidthWithoutControlCodes) {
  for (int width : {20, 40, 60, 80, 200}) {
    const std::string line = format_progress_line(120, 400, 4.1234, 2.95e-3f, 5120, 62, width);
    EXPECT_LE(static_cast<int>(line.size()), std::max(width - 1, 20)) << width;
    for (char c : line) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << width << ": " << line;
    EXPECT_NE(line.find("step 120/4"), std::string::npos) << line;
  }
  EXPECT_EQ(format_progress_line(120, 400, 4.1234, 2.95e-3f, 5120, 62, 200),
            "[############............................] step 120/400  train loss 4.1234  lr "
            "2.95e-03  5120 tok/s  ETA 1m02s");
  EXPECT_EQ(format_progress_line(120, 400, 4.1234, 2.95e-3f, 5120, 62, 60),
            "step 120/400  train loss 4.1234  lr 2.95e-03  ETA 1m02s");
  EXPECT_EQ(format_progress_line(120, 400, 4.1234, 2.95e-3f, 5120, 62, 80),
            "[##.......] step 120/400  train loss 4.1234  lr 2.95e-03  5120 tok/s  ETA 1m02s");
  EXPECT_EQ(format_progress_line(120, 400, 4.1234, 2.95e-3f, 5120, 62, 40),
            "step 120/400  train loss 4.1234");
}

}  // namespace
}  // namespace moe
