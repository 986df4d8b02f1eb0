// Importing a .wasm file gives a compiled WebAssembly.Module (as in Workers);
// instantiate it once per isolate and call its exports per request.
import addModule from "./add.wasm";

const instance = new WebAssembly.Instance(addModule, {});
const { add } = instance.exports;

export default {
  async fetch(request) {
    const url = new URL(request.url);
    const a = Number(url.searchParams.get("a") ?? 2);
    const b = Number(url.searchParams.get("b") ?? 3);
    if (!Number.isInteger(a) || !Number.isInteger(b)) {
      return Response.json({ error: "a and b must be integers" }, { status: 400 });
    }
    return Response.json({ a, b, sum: add(a, b), module: addModule instanceof WebAssembly.Module });
  },
};
