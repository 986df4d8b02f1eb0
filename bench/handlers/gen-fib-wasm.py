#!/usr/bin/env python3
"""Writes fib.wasm (next to this file): one function, `fib(n: i32) -> i32`, exported as
`fib`, computing Fibonacci recursively (fib(0)=0, fib(1)=1). Its source is fib.wat; this
script assembles the same bytes without a toolchain:  python3 bench/handlers/gen-fib-wasm.py
"""
import os


def leb(n):  # unsigned LEB128
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def section(ident, payload):
    return bytes([ident]) + leb(len(payload)) + payload


I32 = 0x7F
types = leb(1) + bytes([0x60, 1, I32, 1, I32])           # (func (param i32) (result i32))
functions = leb(1) + leb(0)                              # function 0 has type 0
exports = leb(1) + leb(3) + b"fib" + bytes([0x00]) + leb(0)  # "fib" → func 0
body = bytes([
    0x00,                    # no locals
    0x20, 0x00,              # local.get 0
    0x41, 0x02,              # i32.const 2
    0x49,                    # i32.lt_u
    0x04, I32,               # if (result i32)
    0x20, 0x00,              #   local.get 0
    0x05,                    # else
    0x20, 0x00, 0x41, 0x01, 0x6B, 0x10, 0x00,  # fib(n - 1)
    0x20, 0x00, 0x41, 0x02, 0x6B, 0x10, 0x00,  # fib(n - 2)
    0x6A,                    #   i32.add
    0x0B,                    # end
    0x0B,                    # end of the function
])
code = leb(1) + leb(len(body)) + body
module = (b"\0asm" + bytes([1, 0, 0, 0]) + section(1, types) + section(3, functions)
          + section(7, exports) + section(10, code))

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fib.wasm")
with open(path, "wb") as f:
    f.write(module)
print(f"{path}: {len(module)} bytes")
