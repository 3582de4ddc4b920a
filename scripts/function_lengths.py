#!/usr/bin/env python3
"""Lists the functions in src/ longer than a limit, counted from the line of the opening brace
to the line of the closing one (lambdas and local classes count with the function around them).

A function is a top-level (or namespace-level, or class-member) brace block whose header ends
in ')' (with qualifiers such as const, noexcept, override, or a trailing return type) and is
not a control statement. Comments, strings and character literals are skipped. Exit status 1
when any function is longer than --max-lines.

Usage: function_lengths.py [--max-lines N] [--all] [ROOT]
"""
import argparse
import pathlib
import re
import sys

CONTROL = re.compile(r"\b(if|for|while|switch|catch|do|else)\s*(\(|$)")
HEADER_END = re.compile(
    r"\)\s*(const|noexcept|override|final|mutable|&|&&|->\s*[\w:<>,\s\*&]+|\s)*$")


def strip_code(text):
    """Text with comments and literals blanked, newlines kept (so line numbers hold)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif text.startswith('R"', i):
            m = re.match(r'R"([^(]*)\(', text[i:])
            end = text.find(")" + m.group(1) + '"', i)
            end = n if end < 0 else end + len(m.group(1)) + 2
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    """(name, first line, line count) of each function body in the file."""
    code = strip_code(path.read_text())
    found, depth, stack = [], 0, []  # stack: (depth, is_function, name, line) per open brace
    statement_start = 0
    line = 1
    inside_function = 0
    for i, c in enumerate(code):
        if c == "\n":
            line += 1
        elif c == "{":
            header = code[statement_start:i].strip()
            last_line = header.split("\n")[-1] if header else ""
            is_function = (inside_function == 0 and bool(HEADER_END.search(header))
                           and not CONTROL.search(last_line) and "=" not in last_line.split("(")[0])
            name = ""
            if is_function:
                m = re.search(r"([~\w:]+(?:<[^<>]*>)?|operator\s*\S+)\s*\([^()]*(?:\([^()]*\)[^()]*)*\)[^()]*$",
                              header)
                name = m.group(1) if m else header[-40:]
                inside_function += 1
            stack.append((is_function, name, line))
            statement_start = i + 1
        elif c == "}":
            if stack:
                is_function, name, start = stack.pop()
                if is_function:
                    inside_function -= 1
                    found.append((name, start, line - start + 1))
            statement_start = i + 1
        elif c == ";":
            statement_start = i + 1
        elif c == ":" and inside_function == 0 and re.search(r"\b(public|private|protected)\s*$",
                                                               code[statement_start:i]):
            statement_start = i + 1
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-lines", type=int, default=80)
    parser.add_argument("--all", action="store_true", help="list every function, longest first")
    parser.add_argument("root", nargs="?", default=str(pathlib.Path(__file__).parent.parent / "src"))
    args = parser.parse_args()
    rows = []
    for path in sorted(pathlib.Path(args.root).rglob("*")):
        if path.suffix in (".cpp", ".h"):
            for name, start, count in functions(path):
                rows.append((count, f"{path.relative_to(args.root)}:{start}", name))
    rows.sort(reverse=True)
    long_rows = [r for r in rows if r[0] > args.max_lines]
    for count, where, name in rows if args.all else long_rows:
        print(f"{count:5d}  {where}  {name}")
    if not args.all:
        print(f"{len(long_rows)} of {len(rows)} functions longer than {args.max_lines} lines")
    return 1 if long_rows else 0


if __name__ == "__main__":
    sys.exit(main())
