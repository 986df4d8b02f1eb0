#!/usr/bin/env python3
"""Reads callgrind profiles and prints the functions of one binary they ran, hottest first.

    python3 bench/link-order.py BINARY_NAME callgrind.out.1 [callgrind.out.2 ...]

Each profile must be written with --demangle=no (the linker matches symbol names as the
object files spell them) and --dump-instr=no. A function's weight is its own instruction
count summed over the profiles; functions outside BINARY_NAME (libc, the loader) and V8's
embedded builtins (one assembler section, which the linker cannot reorder) are left out.
"""
import collections
import re
import sys

# "fn=(12) name" names id 12; a later "fn=(12)" refers back to it. The same for ob=, cfn=, cob=.
NAMED = re.compile(r"(c?(?:fn|ob))=\((\d+)\)(?: (.*))?$")


def self_costs(path, binary, costs):
    names = {"fn": {}, "ob": {}}
    obj = fn = fn_obj = None
    after_calls = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = NAMED.match(line)
            if m:
                kind, ident, name = m.groups()
                table = names[kind.lstrip("c")]
                if name:
                    table[ident] = name
                if kind == "ob":
                    obj = table.get(ident)
                elif kind == "fn":
                    fn, fn_obj = table.get(ident), obj
                continue
            if line.startswith("calls="):
                after_calls = True  # the next cost line is the call's inclusive cost
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if after_calls:
                    after_calls = False
                    continue
                parts = line.split()
                if fn and fn_obj and binary in fn_obj and len(parts) >= 2:
                    # callgrind marks recursion levels as name'2, name'3, ...
                    costs[re.sub(r"'\d+$", "", fn)] += int(parts[1])


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    costs = collections.Counter()
    for path in sys.argv[2:]:
        self_costs(path, sys.argv[1], costs)
    for name, _ in costs.most_common():
        if not name.startswith("Builtins_") and not name.startswith("0x"):
            print(name)


if __name__ == "__main__":
    main()
