// Responses that declare themselves storable by a shared cache are answered by the node's
// cache until they expire: the handler below runs once per URL per minute, however many
// requests arrive. `Cache-Status` on each response says what the cache did.
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/":
        // Stored for 60 s at the edge; purge it with `outpost purge cached --tag home`.
        return new Response("hello from the edge cache\n", {
          headers: {
            "cache-control": "public, max-age=60, stale-while-revalidate=30",
            "cache-tag": "home",
          },
        });
      case "/nocache":
        // Not declared storable: every request runs the handler.
        return new Response("hello from the handler\n");
      case "/expensive": {
        // The Cache API: keep a computed value for 5 minutes, per node and per app.
        const key = new Request(url.origin + "/expensive-result");
        const cached = await caches.default.match(key);
        if (cached) return cached;
        const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(url.search));
        const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
        const response = new Response(`computed ${hex}\n`, {
          headers: { "cache-control": "max-age=300" },
        });
        ctx.waitUntil(caches.default.put(key, response.clone()));
        return response;
      }
      default:
        return new Response("not found\n", { status: 404 });
    }
  },
};
