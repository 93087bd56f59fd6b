// Thin helpers over node-llama-cpp (prebuilt llama.cpp, CPU only): load a
// GGUF, run greedy generation, and read the argmax / logits at every position.
import {getLlama} from "node-llama-cpp";

let llamaPromise = null;
export function llama() {
  llamaPromise ??= getLlama({gpu: false, build: "never", logLevel: "error"});
  return llamaPromise;
}

export async function loadModel(modelPath) {
  const l = await llama();
  return l.loadModel({modelPath, gpuLayers: 0});
}

// Evaluates `ids` in one sequence and returns, for every position, the
// logits of the next token as a Float64Array over the vocabulary. Positions
// before `from` get null (asking for fewer rows makes long windows fast).
export async function positionLogits(model, ids, nVocab, from = 0) {
  const context = await model.createContext({contextSize: Math.max(64, ids.length + 8), batchSize: 512,
                                            sequences: 1, threads: 2});
  try {
    const seq = context.getSequence();
    const input = ids.map((t, i) => (i >= from ? [t, {generateNext: {logits: true}}] : t));
    const out = await seq.controlledEvaluate(input);
    return ids.map((_, i) => {
      if (i < from) return null;
      const row = new Float64Array(nVocab).fill(-Infinity);
      const logits = out[i]?.next?.logits;
      if (!logits) throw new Error(`no logits returned for position ${i}`);
      for (const [tok, v] of logits) row[tok] = v;
      return row;
    });
  } finally {
    await context.dispose();
  }
}

export function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; ++i) if (row[i] > row[best]) best = i;
  return best;
}

// Greedy continuation: `promptIds` then `n` tokens, each the argmax of the logits.
export async function greedy(model, promptIds, n) {
  const context = await model.createContext({contextSize: Math.max(64, promptIds.length + n + 8), sequences: 1,
                                            threads: 2});
  try {
    const seq = context.getSequence();
    const wantTop = {generateNext: {logits: true}};
    // The logits map is sorted from the highest logit down.
    const topOf = (o) => o.next.logits.entries().next().value[0];
    let out = await seq.controlledEvaluate(promptIds.map((t, i) => (i === promptIds.length - 1 ? [t, wantTop] : t)));
    let next = topOf(out[promptIds.length - 1]);
    const ids = [];
    for (let k = 0; k < n; ++k) {
      ids.push(next);
      if (k + 1 === n) break;
      out = await seq.controlledEvaluate([[next, wantTop]]);
      next = topOf(out[0]);
    }
    return ids;
  } finally {
    await context.dispose();
  }
}
