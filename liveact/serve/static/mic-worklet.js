// Audio worklet: collects microphone samples into ~20 ms chunks and posts them to the page.
class PcmTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 50);
    this.chunk = new Float32Array(this.size);
    this.filled = 0;
  }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      let offset = 0;
      while (offset < channel.length) {
        const n = Math.min(channel.length - offset, this.chunk.length - this.filled);
        this.chunk.set(channel.subarray(offset, offset + n), this.filled);
        this.filled += n;
        offset += n;
        if (this.filled === this.chunk.length) {
          // Transferring detaches the buffer (its length becomes 0): allocate from the stored size.
          this.port.postMessage(this.chunk.buffer, [this.chunk.buffer]);
          this.chunk = new Float32Array(this.size);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("pcm-tap", PcmTap);
