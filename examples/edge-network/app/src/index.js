export default {
  fetch(request, env) {
    return new Response(`${env.MESSAGE} (v1)\n`);
  },
};
