// read_corpus on a user's own plain UTF-8 text: a file split on blank lines, a folder whose
// subfolders name the domains, the split by document, and the errors; the shipped gzip-JSONL
// format still reads as before. Also the OpenBLAS kernel warning (a pure function of the core
// name, OPENBLAS_CORETYPE and the CPU's level).
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "tensor/blas_info.h"
#include "tensor/error.h"
#include "test_util.h"
#include "text/data.h"

namespace moe {
namespace {
using test::error_of;
using test::temp_dir;
namespace fs = std::filesystem;

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

void write_gzip(const fs::path& path, const std::string& text) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, text.data(), static_cast<unsigned>(text.size())), int(text.size()));
  gzclose(f);
}

std::vector<std::string> splits(const std::vector<Document>& docs) {
  std::vector<std::string> out;
  for (const Document& d : docs) out.push_back(d.split);
  return out;
}

TEST(Corpus, PlainTextFileSplitsOnBlankLines) {
  const std::string dir = temp_dir("file");
  // Whitespace-only lines separate too; CRLF line ends lose their CR; leading and trailing
  // blank lines make no empty documents.
  write(dir + "/poems.txt",
        "\n\nRoses are red,\nviolets blue.\n \t\nSecond one\r\nwith CRLF\r\n\r\n\n"
        "Third: caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x99\x82\n\n");
  const std::vector<Document> docs = read_corpus(dir + "/poems.txt");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].text, "Roses are red,\nviolets blue.");
  EXPECT_EQ(docs[1].text, "Second one\nwith CRLF");
  EXPECT_EQ(docs[2].text, "Third: caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x99\x82");
  for (const Document& d : docs) EXPECT_EQ(d.domain, "poems");
  EXPECT_EQ(docs[0].source, dir + "/poems.txt:3");
  EXPECT_EQ(docs[1].source, dir + "/poems.txt:6");
  // 3 documents: the last is validation, so the run has a validation loss.
  EXPECT_EQ(splits(docs), (std::vector<std::string>{"train", "train", "valid"}));
}

TEST(Corpus, EverySixteenthDocumentOfADomainIsValidation) {
  const std::string dir = temp_dir("sixteen");
  std::string text;
  for (int i = 0; i < 40; ++i) text += "document " + std::to_string(i) + "\n\n";
  write(dir + "/many.txt", text);
  const std::vector<Document> docs = read_corpus(dir + "/many.txt");
  ASSERT_EQ(docs.size(), 40u);
  for (size_t i = 0; i < docs.size(); ++i)
    EXPECT_EQ(docs[i].split, i == 15 || i == 31 ? "valid" : "train") << "document " << i;
  // A single document is all training (there is nothing to hold out).
  write(dir + "/one.txt", "only one\n");
  EXPECT_EQ(splits(read_corpus(dir + "/one.txt")), std::vector<std::string>{"train"});
}

TEST(Corpus, GzipPlainTextAndDomainFromTheFileName) {
  const std::string dir = temp_dir("gzip");
  write_gzip(dir + "/notes.txt.gz", "a\n\nb\n");
  const std::vector<Document> docs = read_corpus(dir + "/notes.txt.gz");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].domain, "notes");
  EXPECT_EQ(docs[1].text, "b");
}

TEST(Corpus, FolderSubfoldersNameTheDomains) {
  const std::string dir = temp_dir("folder");
  write(dir + "/corpus/poetry/b.txt", "second poem\n\nstill the second\n");
  write(dir + "/corpus/poetry/a.md", "first poem");
  write(dir + "/corpus/poetry/deeper/c.txt", "third poem");
  write(dir + "/corpus/poetry/.hidden", "\xFF not read");
  write(dir + "/corpus/.git/config", "\xFF not read");
  write(dir + "/corpus/code/main.c", "int main() { return 0; }\n");
  write(dir + "/corpus/code/empty.c", "\n  \n");
  write(dir + "/corpus/readme.txt", "top level");
  const std::vector<Document> docs = read_corpus(dir + "/corpus/");
  ASSERT_EQ(docs.size(), 5u);
  // The folder's own files first (domain = the folder), then the subfolders in name order,
  // each file one document (blank lines inside it kept), files in path order.
  EXPECT_EQ(docs[0].domain, "corpus");
  EXPECT_EQ(docs[0].text, "top level");
  EXPECT_EQ(docs[1].domain, "code");
  EXPECT_EQ(docs[1].text, "int main() { return 0; }\n");
  EXPECT_EQ(docs[2].domain, "poetry");
  EXPECT_EQ(docs[2].source, dir + "/corpus/poetry/a.md");
  EXPECT_EQ(docs[3].text, "second poem\n\nstill the second\n");
  EXPECT_EQ(docs[4].source, dir + "/corpus/poetry/deeper/c.txt");
  EXPECT_EQ(splits(docs), (std::vector<std::string>{"train", "train", "train", "train", "valid"}));
}

TEST(Corpus, ShippedJsonlFormatStillReads) {
  const std::string dir = temp_dir("jsonl");
  write_gzip(dir + "/c.jsonl.gz",
             R"({"domain": "en", "source": "x", "split": "valid", "text": "hello"})"
             "\n");
  const std::vector<Document> docs = read_corpus(dir + "/c.jsonl.gz");
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0].split, "valid");
  EXPECT_EQ(docs[0].text, "hello");
  // Recognised by its first line whatever its name; a text that merely starts with a brace
  // is plain text.
  write_gzip(dir + "/c.gz", R"({"domain": "en", "source": "x", "split": "train", "text": "hi"})");
  EXPECT_EQ(read_corpus(dir + "/c.gz").at(0).text, "hi");
  write(dir + "/code.c", "{ int x; }\n\n{ int y; }\n");
  const std::vector<Document> code = read_corpus(dir + "/code.c");
  ASSERT_EQ(code.size(), 2u);
  EXPECT_EQ(code[1].text, "{ int y; }");
  EXPECT_EQ(code[1].domain, "code");
}

TEST(Corpus, ErrorsNameTheFile) {
  const std::string dir = temp_dir("errors");
  write(dir + "/latin1.txt", "ok\n\ncaf\xE9\n");
  EXPECT_EQ(error_of([&] { read_corpus(dir + "/latin1.txt"); }),
            "corpus file '" + dir + "/latin1.txt' is not UTF-8 text (byte 7 is 0xe9)");
  // Overlong encodings and surrogates are not UTF-8 either.
  write(dir + "/overlong.txt", "\xC0\xAF");
  EXPECT_NE(error_of([&] { read_corpus(dir + "/overlong.txt"); }).find("byte 0"),
            std::string::npos);
  write(dir + "/surrogate.txt", "a\xED\xA0\x80");
  EXPECT_NE(error_of([&] { read_corpus(dir + "/surrogate.txt"); }).find("byte 1"),
            std::string::npos);
  write(dir + "/blank.txt", "\n \n\n");
  EXPECT_EQ(error_of([&] { read_corpus(dir + "/blank.txt"); }),
            "corpus '" + dir + "/blank.txt' holds no documents");
  fs::create_directories(dir + "/empty");
  EXPECT_EQ(error_of([&] { read_corpus(dir + "/empty"); }),
            "corpus '" + dir + "/empty' holds no documents");
  EXPECT_EQ(error_of([&] { read_corpus(dir + "/missing.txt"); }),
            "corpus '" + dir + "/missing.txt' does not exist");
}

TEST(BlasInfo, WarnsWhenTheCoretypeForcesSlowerKernels) {
  EXPECT_EQ(blas_core_level("Haswell"), VectorLevel::Avx2);
  EXPECT_EQ(blas_core_level("SkylakeX"), VectorLevel::Avx512);
  EXPECT_EQ(blas_core_level("Cooperlake"), VectorLevel::Avx512);
  EXPECT_EQ(blas_core_level("Prescott"), VectorLevel::Sse);
  const std::string w = blas_kernel_warning("Haswell", "Haswell", VectorLevel::Avx512);
  EXPECT_NE(w.find("OPENBLAS_CORETYPE=Haswell"), std::string::npos) << w;
  EXPECT_NE(w.find("AVX-512"), std::string::npos) << w;
  EXPECT_EQ(w.find('\n'), std::string::npos) << "one line";
  // No warning when OpenBLAS chose by itself, or the kernels match the CPU.
  EXPECT_EQ(blas_kernel_warning("Haswell", "", VectorLevel::Avx512), "");
  EXPECT_EQ(blas_kernel_warning("Haswell", "Haswell", VectorLevel::Avx2), "");
  EXPECT_EQ(blas_kernel_warning("SkylakeX", "SkylakeX", VectorLevel::Avx512), "");
}

}  // namespace
}  // namespace moe
