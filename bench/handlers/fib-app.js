// The fib handler's logic, shared by its two entry files (fib.js for Outpost, fib.deno.js for
// Deno), which differ only in how they import ./fib.wasm: instantiated once per isolate,
// fib(20) computed in WebAssembly on every request.
export function app(fibModule) {
  const { fib } = new WebAssembly.Instance(fibModule, {}).exports;
  return {
    async fetch(request) {
      return new Response(`fib(20) = ${fib(20)}\n`);
    },
  };
}
