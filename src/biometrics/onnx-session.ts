import { createRequire } from 'node:module';
import type * as Ort from 'onnxruntime-node';

const require = createRequire(import.meta.url);

/**
 * ONNX Runtime's graph optimisation levels tried at load. `all` adds the NCHWc layout rewrites:
 * on AVX-512 EPYC cores a pass took 12 ms with them and 16 ms without, on the Xeon cores of an
 * earlier machine 56 ms with them and 18 ms without (outputs equal to 3e-7 on both). Which is
 * faster depends on the CPU, so each is timed on this one.
 */
const OPTIMISATION_LEVELS = ['extended', 'all'] as const;
/** Passes of each level timed at load (interleaved, so a busy moment hits both alike). */
const TIMED_PASSES = 6;
/** Largest difference in any output value for a faster level to be taken: a level is a speed-up, never a different model. */
const SAME_OUTPUT = 1e-4;

type Level = (typeof OPTIMISATION_LEVELS)[number];

/** One model, run at the optimisation level that is fastest on this CPU among those whose outputs agree. */
export interface TunedSession {
  level: Level;
  /** Median time of a pass at each level when it was chosen, ms. */
  timings: Record<Level, number>;
  run(input: Float32Array): Promise<Float32Array>;
}

/** `side`: the square input's side (the model takes [1, 3, side, side]). */
export async function tunedSession(file: Uint8Array, side: number): Promise<TunedSession> {
  const ort = require('onnxruntime-node') as typeof Ort;
  const sessions = new Map<Level, Ort.InferenceSession>();
  for (const level of OPTIMISATION_LEVELS) {
    sessions.set(
      level,
      await ort.InferenceSession.create(file, {
        // one thread per engine worker: the pool already gives each core a worker
        intraOpNumThreads: 1,
        interOpNumThreads: 1,
        graphOptimizationLevel: level,
        executionMode: 'sequential',
      }),
    );
  }
  const runOn = async (session: Ort.InferenceSession, input: Float32Array) => {
    const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', input, [1, 3, side, side]) });
    return out[session.outputNames[0]].data as Float32Array;
  };
  // any fixed input does: the cost does not depend on the values, and a rewrite that changed the
  // function would show on any of them
  const probe = Float32Array.from({ length: 3 * side * side }, (_v, i) => Math.sin(i / 97) * 0.8);
  // each level's first pass (it allocates) checks it against the first level's, `extended`
  const outputs = new Map<Level, Float32Array>();
  for (const [level, session] of sessions) outputs.set(level, await runOn(session, probe));
  const reference = outputs.get(OPTIMISATION_LEVELS[0])!;
  const agrees = (l: Level) => outputs.get(l)!.every((v, i) => Math.abs(v - reference[i]) <= SAME_OUTPUT);
  const times = new Map<Level, number[]>(OPTIMISATION_LEVELS.map((l) => [l, []]));
  for (let k = 0; k < TIMED_PASSES; k++) {
    for (const [level, session] of sessions) {
      const t = performance.now();
      await runOn(session, probe);
      times.get(level)!.push(performance.now() - t);
    }
  }
  const timings = Object.fromEntries([...times].map(([l, t]) => [l, median(t)])) as Record<Level, number>;
  const level = OPTIMISATION_LEVELS.filter(agrees).reduce((a, b) => (timings[b] < timings[a] ? b : a));
  for (const [l, session] of sessions) if (l !== level) await session.release();
  const chosen = sessions.get(level)!;
  return { level, timings, run: (input) => runOn(chosen, input) };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}
