;; The source of add.wasm (41 bytes): `wat2wasm add.wat -o add.wasm` rebuilds it.
(module
  (func (export "add") (param i32 i32) (result i32)
    local.get 0
    local.get 1
    i32.add))
