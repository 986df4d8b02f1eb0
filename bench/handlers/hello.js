// A static answer: the per-request cost of the runtime itself.
export default {
  async fetch(request) {
    return new Response("hello from the edge\n");
  },
};
