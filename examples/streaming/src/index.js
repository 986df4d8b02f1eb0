// Streams both ways: GET / sends five lines 100 ms apart as they are produced;
// POST (or PUT) /upcase streams the request body back upper-cased, chunk by chunk.
export default {
  async fetch(request) {
    const url = new URL(request.url);
    if ((request.method === "POST" || request.method === "PUT") && url.pathname === "/upcase") {
      const upcase = new TransformStream({
        transform(chunk, controller) {
          controller.enqueue(chunk.toUpperCase());
        },
      });
      const body = request.body
        .pipeThrough(new TextDecoderStream())
        .pipeThrough(upcase)
        .pipeThrough(new TextEncoderStream());
      return new Response(body, { headers: { "content-type": "text/plain;charset=UTF-8" } });
    }
    const count = Number(url.searchParams.get("n") ?? 5);
    const interval = Number(url.searchParams.get("ms") ?? 100);
    const encoder = new TextEncoder();
    let i = 0;
    const stream = new ReadableStream({
      async pull(controller) {
        if (i > 0) await new Promise((resolve) => setTimeout(resolve, interval));
        if (i === count) {
          controller.close();
          return;
        }
        controller.enqueue(encoder.encode(`chunk ${i} at ${Math.round(performance.now())}ms\n`));
        i++;
      },
    });
    return new Response(stream, { headers: { "content-type": "text/plain;charset=UTF-8" } });
  },
};
