// Parses the JSON request body and answers it re-serialized (bench/handlers/echo.json, ~100 bytes).
export default {
  async fetch(request) {
    const value = await request.json();
    return new Response(JSON.stringify(value), {
      headers: { "content-type": "application/json" },
    });
  },
};
