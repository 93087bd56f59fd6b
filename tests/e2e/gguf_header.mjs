// Reads a GGUF file's metadata keys and tensor infos, independently of
// Tailor's own reader, so the tests check the file and not our parser.
import {openSync, readSync, closeSync} from "node:fs";

export function readGgufHeader(path) {
  const fd = openSync(path, "r");
  const size = 64 << 20;  // headers of the test models are far smaller
  const buf = Buffer.alloc(size);
  const got = readSync(fd, buf, 0, size, 0);
  closeSync(fd);
  let p = 0;
  const need = (n) => { if (p + n > got) throw new Error(`${path}: header truncated`); };
  const u32 = () => { need(4); const v = buf.readUInt32LE(p); p += 4; return v; };
  const u64 = () => { need(8); const v = buf.readBigUInt64LE(p); p += 8; return Number(v); };
  const str = () => { const n = u64(); need(n); const s = buf.toString("utf8", p, p + n); p += n; return s; };
  const sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8};
  const value = (t) => {
    switch (t) {
      case 4: return u32();
      case 5: { need(4); const v = buf.readInt32LE(p); p += 4; return v; }
      case 6: { need(4); const v = buf.readFloatLE(p); p += 4; return v; }
      case 7: { need(1); return buf[p++] !== 0; }
      case 8: return str();
      case 9: { const et = u32(), n = u64(); const a = []; for (let i = 0; i < n; ++i) a.push(value(et)); return a; }
      default: { const n = sizes[t]; if (!n) throw new Error(`${path}: bad value type ${t}`); need(n); p += n; return null; }
    }
  };
  need(4);
  if (buf.toString("latin1", 0, 4) !== "GGUF") throw new Error(`${path}: not a GGUF file`);
  p = 4;
  const version = u32(), nTensors = u64(), nKv = u64();
  const kv = {};
  for (let i = 0; i < nKv; ++i) { const k = str(); kv[k] = value(u32()); }
  const tensors = [];
  for (let i = 0; i < nTensors; ++i) {
    const name = str(), nd = u32(), ne = [];
    for (let d = 0; d < nd; ++d) ne.push(u64());
    const type = u32(), offset = u64();
    tensors.push({name, ne, type, offset});
  }
  return {version, kv, tensors};
}
