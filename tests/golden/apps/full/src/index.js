import add from "./add.wasm";
import data from "./lib/data.json";
import page from "./lib/page.html";
export default { fetch() { return new Response(page + data.n); } };
