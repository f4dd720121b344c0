// Node 20 (Debian's) lacks Promise.withResolvers, which js-libp2p 3 uses; imported first.
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((a, b) => { resolve = a; reject = b })
    return { promise, resolve, reject }
  }
}
