#!/usr/bin/env python3
"""Instructions per request from a callgrind profile of a server, split by where they ran.

    python3 bench/instructions.py PROFILE [PROFILE ...]

Each PROFILE is a callgrind dump (--dump-instr=no) taken over a measured load only (zeroed
after the warm-up, dumped before the server stops). Requests are counted as the responses
the server wrote: calls of send, sendto, sendmsg and writev (one per response for the small
responses of bench/handlers/; `write` is left out, as mio's and V8's wake-ups use it).
Prints, per profile, user-space instructions per request and, when the binary has symbols
(Outpost's does, a released deno's does not), their split by crate or part: one line per
part, most first. Only user space is counted: the kernel's share (syscalls, wake-ups) is not.
"""
import collections
import re
import sys

# "fn=(12) name" names id 12; a later "fn=(12)" refers back to it. The same for cfn=.
NAMED = re.compile(r"c?fn=\((\d+)\)(?: (.*))?$")
RESPONSE_WRITES = {"send", "sendto", "sendmsg", "writev"}


def read(path):
    """Self instructions per function name, and calls per callee name."""
    names = {}
    self_cost = collections.Counter()
    calls = collections.Counter()
    fn = callee = None
    after_calls = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith(("fn=", "cfn=")):
                m = NAMED.match(line)
                if m:
                    ident, name = m.groups()
                    if name:
                        names[ident] = name
                    name = names.get(ident, ident)
                else:
                    name = line.split("=", 1)[1]
                if line.startswith("fn="):
                    fn = name
                else:
                    callee = name
            elif line.startswith("calls="):
                calls[callee] += int(line[6:].split()[0])
                after_calls = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if after_calls:
                    after_calls = False  # the inclusive cost of the call just named
                else:
                    self_cost[fn] += cost
    return self_cost, calls


# Parts of Outpost's binary, by the crate a function's name starts with (a trait method
# `<T as Trait>::f` and drop glue `drop_in_place<T>` count for T's crate).
PARTS = [
    ("HTTP/1.1: deno_http_h1, hyper, hyper-util, httparse, http, httpdate",
     ("deno_http_h1", "hyper", "hyper_util", "httparse", "http", "httpdate")),
    ("gateway (routing, request id, metrics, log)", ("outpost_gateway",)),
    ("CDN cache", ("outpost_cache",)),
    ("pool (dispatch to an isolate)", ("outpost_pool",)),
    ("isolate crate (Rust side of a request)", ("outpost_isolate",)),
    ("deno_core and Deno's ext crates", ("deno_core", "deno_web", "deno_fetch", "deno_crypto",
                                         "deno_webidl", "deno_url", "deno_net", "deno_error")),
    ("tokio", ("tokio", "mio")),
    ("allocator (mimalloc)", ("mi",)),
    ("Rust std, core, alloc, bytes, hashing", ("std", "core", "alloc", "bytes", "hashbrown",
                                               "foldhash", "arc_swap", "prometheus_client",
                                               "itoa", "smallvec", "futures_util")),
]


def crate_of(name):
    name = re.sub(r"^<+", "", name)
    m = re.match(r"core::ptr::drop_in_place<+(.*)", name)
    if m:
        name = m.group(1)
    if name.startswith(("mi_", "_mi_")):
        return "mi"
    m = re.match(r"&?(?:mut )?(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)::", name)
    return m.group(1) if m else None


def part_of(name):
    if name.startswith("Builtins_") or re.match(r"0x[0-9a-f]+$", name):
        return "JavaScript: V8 builtins and JIT code"
    if name.startswith(("v8::", "v8__", "cppgc::", "heap::", "std::__")) or "v8::internal" in name:
        return "V8 runtime (C++, GC)"
    if name.startswith("__mem") or name in ("memcpy", "memmove"):
        return "memcpy/memmove"
    crate = crate_of(name)
    for part, crates in PARTS:
        if crate in crates:
            return part
    return "other (libc, unattributed)"


def main():
    for path in sys.argv[1:]:
        self_cost, calls = read(path)
        total = sum(self_cost.values())
        requests = sum(calls[name] for name in RESPONSE_WRITES)
        if requests == 0:
            print(f"{path}: no responses written in the profile")
            continue
        print(f"{path}: {requests} responses, {total / requests:,.0f} instructions per request")
        named = sum(c for n, c in self_cost.items() if n and crate_of(n))
        if named < total / 4:
            print("  (no symbols: no split)")
            continue
        split = collections.Counter()
        for name, cost in self_cost.items():
            split[part_of(name or "")] += cost
        for part, cost in split.most_common():
            print(f"  {cost / requests:8,.0f}  {100 * cost / total:4.1f}%  {part}")


if __name__ == "__main__":
    main()
