#include "platform/file_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "tests/support/test_support.h"

namespace ws {
namespace {

using ws::testing::TempDir;

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

uint32_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<uint32_t>(st.st_mode & 07777);
}

std::string TempNameFor(const std::string& path) { return path + ".tmp-" + std::to_string(::getpid()); }

TEST(FileSystemTest, AtomicWriteCreatesAndReplaces) {
  TempDir dir;
  std::string path = dir.File("state.json");
  ASSERT_TRUE(AtomicWriteFile(path, "old contents that are longer").ok());
  Result<std::string> r = ReadFile(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, "old contents that are longer");

  ASSERT_TRUE(AtomicWriteFile(path, "new").ok());
  r = ReadFile(path);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "new");  // fully replaced, no tail of the old contents
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"state.json"});  // no temp file left
}

TEST(FileSystemTest, ReplaceUntilRebootCreatesAndReplacesWithoutATempLeft) {
  TempDir dir;
  std::string path = dir.File("marker");
  ASSERT_TRUE(ReplaceFileUntilReboot(path, "first, and longer").ok());
  Result<std::string> r = ReadFile(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, "first, and longer");
  ASSERT_TRUE(ReplaceFileUntilReboot(path, "second").ok());
  r = ReadFile(path);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "second");
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"marker"});
  // A folder that is not there: an error naming the file, nothing created.
  Status s = ReplaceFileUntilReboot(dir.File("missing/marker"), "x");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("missing/marker"), std::string::npos) << s.ToString();
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"marker"});
}

TEST(FileSystemTest, AtomicWriteKeepsBinaryAndLargeContents) {
  TempDir dir;
  std::string path = dir.File("blob");
  std::string data;
  for (int i = 0; i < 100'000; ++i) data.push_back(static_cast<char>(i % 251));
  data[10] = '\0';
  ASSERT_TRUE(AtomicWriteFile(path, data).ok());
  Result<std::string> r = ReadFile(path);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), data.size());
  EXPECT_TRUE(*r == data);
}

TEST(FileSystemTest, AtomicWriteAppliesMode) {
  TempDir dir;
  std::string path = dir.File("token");
  ASSERT_TRUE(AtomicWriteFile(path, "secret", 0600).ok());
  EXPECT_EQ(ModeOf(path), 0600u);
  // Replacing gives the new file the new mode (within the usual umask 022).
  ASSERT_TRUE(AtomicWriteFile(path, "less secret", 0640).ok());
  EXPECT_EQ(ModeOf(path), 0640u);
  ASSERT_TRUE(AtomicWriteFile(path, "secret again", 0600).ok());
  EXPECT_EQ(ModeOf(path), 0600u);
}

TEST(FileSystemTest, AtomicWriteAppliesModeOverStaleTempFile) {
  // A power cut can leave "<path>.tmp-<pid>" behind, and after a reboot the
  // daemon often gets the same pid again. The new file must still get `mode`,
  // not the permissions of the leftover.
  TempDir dir;
  std::string path = dir.File("token");
  std::string stale = TempNameFor(path);
  {
    int fd = ::open(stale.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::fchmod(fd, 0644), 0);
    ASSERT_EQ(::write(fd, "half-written", 12), 12);
    ::close(fd);
  }
  ASSERT_TRUE(AtomicWriteFile(path, "secret", 0600).ok());
  EXPECT_EQ(ModeOf(path), 0600u);
  Result<std::string> r = ReadFile(path);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "secret");
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"token"});
}

TEST(FileSystemTest, AtomicWriteIntoMissingFolderFails) {
  TempDir dir;
  std::string path = dir.File("missing/state.json");
  Status s = AtomicWriteFile(path, "x");
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
  EXPECT_NE(s.message().find(dir.path() + "/missing/"), std::string::npos) << s.message();
  EXPECT_FALSE(PathExists(dir.File("missing")));
  EXPECT_TRUE(ListDir(dir.path()).empty());
}

TEST(FileSystemTest, FailedAtomicWriteLeavesOldFileIntact) {
  TempDir dir;
  std::string path = dir.File("state.json");
  ASSERT_TRUE(AtomicWriteFile(path, "old").ok());
  // A directory where the temp file has to go makes the write fail.
  ASSERT_EQ(::mkdir(TempNameFor(path).c_str(), 0755), 0);
  Status s = AtomicWriteFile(path, "new");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
  Result<std::string> r = ReadFile(path);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "old");
}

TEST(FileSystemTest, ReadMissingFileIsNotFound) {
  TempDir dir;
  Result<std::string> r = ReadFile(dir.File("nope"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find(dir.File("nope")), std::string::npos) << r.status().message();
}

TEST(FileSystemTest, ReadDirectoryFails) {
  TempDir dir;
  Result<std::string> r = ReadFile(dir.path());
  EXPECT_FALSE(r.ok());
}

TEST(FileSystemTest, ReadEmptyFile) {
  TempDir dir;
  ASSERT_TRUE(AtomicWriteFile(dir.File("empty"), "").ok());
  Result<std::string> r = ReadFile(dir.File("empty"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "");
}

TEST(FileSystemTest, ReadRegularFileTakesSmallFilesAndRefusesEverythingElse) {
  TempDir dir;
  ASSERT_TRUE(AtomicWriteFile(dir.File("secret"), "s3cret\n").ok());
  Result<std::string> r = ReadRegularFile(dir.File("secret"), 7);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, "s3cret\n");

  r = ReadRegularFile(dir.File("secret"), 6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message().find("s3cret"), std::string::npos) << r.status().message();

  EXPECT_EQ(ReadRegularFile(dir.File("nope"), 100).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ReadRegularFile(dir.path(), 100).status().code(), StatusCode::kInvalidArgument);
  // A FIFO with no writer would block a plain read for ever.
  ASSERT_EQ(::mkfifo(dir.File("fifo").c_str(), 0600), 0);
  EXPECT_EQ(ReadRegularFile(dir.File("fifo"), 100).status().code(), StatusCode::kInvalidArgument);
}

TEST(FileSystemTest, MakeDirectoriesNested) {
  TempDir dir;
  std::string deep = dir.File("a/b/c");
  ASSERT_TRUE(MakeDirectories(deep).ok());
  struct stat st {};
  ASSERT_EQ(::stat(deep.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  // Existing directories are fine, with or without a trailing slash.
  EXPECT_TRUE(MakeDirectories(deep).ok());
  EXPECT_TRUE(MakeDirectories(dir.File("a/b/")).ok());
  EXPECT_TRUE(MakeDirectories(dir.path()).ok());
  // A file can then be written there.
  EXPECT_TRUE(AtomicWriteFile(deep + "/f", "x").ok());
}

TEST(FileSystemTest, MakeDirectoriesOnExistingFileFails) {
  TempDir dir;
  std::string file = dir.File("plain");
  ASSERT_TRUE(AtomicWriteFile(file, "data").ok());
  Status s = MakeDirectories(file);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(file), std::string::npos) << s.message();
  Status below = MakeDirectories(file + "/sub");
  EXPECT_FALSE(below.ok());
  Result<std::string> r = ReadFile(file);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "data");
}

TEST(FileSystemTest, MakeDirectoriesEmptyPathIsInvalid) {
  EXPECT_EQ(MakeDirectories("").code(), StatusCode::kInvalidArgument);
}

TEST(FileSystemTest, QuerySpaceIsSane) {
  TempDir dir;
  Result<SpaceInfo> r = QuerySpace(dir.path());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_GT(r->free_bytes, 0u);
  EXPECT_GE(r->total_bytes, r->free_bytes);
  EXPECT_EQ(QuerySpace(dir.File("missing")).status().code(), StatusCode::kNotFound);
}

TEST(FileSystemTest, RenameDurablyMovesAndReplaces) {
  TempDir dir;
  std::string from = dir.File("from");
  std::string to = dir.File("to");
  ASSERT_TRUE(AtomicWriteFile(from, "payload").ok());
  ASSERT_TRUE(AtomicWriteFile(to, "previous").ok());
  ASSERT_TRUE(RenameDurably(from, to).ok());
  EXPECT_FALSE(PathExists(from));
  Result<std::string> r = ReadFile(to);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "payload");
}

TEST(FileSystemTest, RenameDurablyMissingSourceIsNotFound) {
  TempDir dir;
  Status s = RenameDurably(dir.File("nope"), dir.File("to"));
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find(dir.File("nope")), std::string::npos);
  EXPECT_FALSE(PathExists(dir.File("to")));
}

TEST(FileSystemTest, SyncDirectory) {
  TempDir dir;
  EXPECT_TRUE(SyncDirectory(dir.path()).ok());
  EXPECT_EQ(SyncDirectory(dir.File("missing")).code(), StatusCode::kNotFound);
}

TEST(FileSystemTest, PathExists) {
  TempDir dir;
  EXPECT_TRUE(PathExists(dir.path()));
  EXPECT_FALSE(PathExists(dir.File("x")));
  ASSERT_TRUE(AtomicWriteFile(dir.File("x"), "").ok());
  EXPECT_TRUE(PathExists(dir.File("x")));
}

TEST(FileSystemTest, DirName) {
  EXPECT_EQ(DirName("/var/lib/waystation/outbox.db"), "/var/lib/waystation");
  EXPECT_EQ(DirName("var/outbox.db"), "var");
  EXPECT_EQ(DirName("outbox.db"), ".");
  EXPECT_EQ(DirName(""), ".");
  EXPECT_EQ(DirName("/outbox.db"), "/");
  EXPECT_EQ(DirName("/"), "/");
  EXPECT_EQ(DirName("./outbox.db"), ".");
}

TEST(FileSystemTest, AtomicWriteWithBareFileNameUsesCurrentDirectory) {
  TempDir dir;
  char old_cwd[4096];
  ASSERT_NE(::getcwd(old_cwd, sizeof old_cwd), nullptr);
  ASSERT_EQ(::chdir(dir.path().c_str()), 0);
  Status s = AtomicWriteFile("bare.txt", "here");
  ASSERT_EQ(::chdir(old_cwd), 0);
  ASSERT_TRUE(s.ok()) << s.ToString();
  Result<std::string> r = ReadFile(dir.File("bare.txt"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "here");
}

}  // namespace
}  // namespace ws
