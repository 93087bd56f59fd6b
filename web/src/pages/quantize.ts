import { Chart, registerables } from 'chart.js';
import { get, post, q, Snapshot, Task, token } from '../api';
import { error, field, h, input, remember } from '../dom';
import type { Page } from '../main';

Chart.register(...registerables);

export function quantizePage(): Page {
  const model = input('model', '', { size: 50 });
  const strategy = input('strategy', '', { size: 50, placeholder: 'strategy.yaml' });
  const output = input('output', '', { size: 50, placeholder: 'out.gguf' });
  const text = input('text', '', { size: 50, placeholder: 'eval text' });
  const baselines = input('baselines', 'Q8_0,Q4_K_M', { size: 30 });
  const strategies = input('strategies', '', { size: 50, placeholder: 'strategy files, comma-separated' });
  const ctx = input('ctx', '512', { type: 'number' });
  const windows = input('windows', '32', { type: 'number' });
  remember(model, 'model'); remember(strategy, 'strategy'); remember(output, 'output'); remember(text, 'eval');
  remember(baselines, 'baselines'); remember(strategies, 'strategies'); remember(ctx, 'ctx'); remember(windows, 'windows');
  const qmsg = h('div');
  const cmsg = h('div');
  const result = h('div');
  const canvas = h('canvas', { id: 'compare-chart' }) as HTMLCanvasElement;
  let chart: Chart | null = null;
  let qtask = 0, ctask = 0, shown = 0;

  const quantize = async () => {
    try {
      const r = await post<{ task: number }>('/api/quantize', { model: model.value, strategy: strategy.value, output: output.value });
      qtask = r.task;
      qmsg.replaceChildren(h('p', { class: 'muted' }, `task ${r.task} started`));
    } catch (e) {
      error(qmsg, e);
    }
  };
  const compare = async () => {
    try {
      const r = await post<{ task: number }>('/api/compare', {
        model: model.value, text: text.value, baselines: baselines.value,
        strategies: strategies.value || undefined, ctx: Number(ctx.value), windows: Number(windows.value),
      });
      ctask = r.task;
      cmsg.replaceChildren(h('p', { class: 'muted' }, `task ${r.task} started`));
    } catch (e) {
      error(cmsg, e);
    }
  };

  const showCompare = async (id: number) => {
    const t = await get<Task>(`/api/tasks/${id}`);
    const d = t.result.data;
    result.replaceChildren(h('pre', { class: 'table' }, t.result.table), h('div', { class: 'chart' }, canvas));
    chart?.destroy();
    const pts = (kind: string) => d.entries.filter((e: any) => e.kind === kind).map((e: any) => ({ x: e.bpw, y: e.kld.value, name: e.name }));
    chart = new Chart(canvas, {
      type: 'scatter',
      data: {
        datasets: [
          { label: 'llama.cpp recipes', data: pts('recipe'), backgroundColor: '#6b7280', pointRadius: 5 },
          { label: 'Tailor strategies', data: pts('strategy'), backgroundColor: '#2563eb', borderColor: '#2563eb', showLine: true, pointRadius: 5 },
        ],
      },
      options: {
        animation: false,
        plugins: { tooltip: { callbacks: { label: (c: any) => `${c.raw.name}: ${c.raw.x.toFixed(2)} bpw, KLD ${c.raw.y.toExponential(3)}` } } },
        scales: { x: { title: { display: true, text: 'bits per weight' } }, y: { type: 'logarithmic', title: { display: true, text: 'mean KL divergence' } } },
      },
    });
  };

  const el = h('section', {}, h('h2', {}, 'Quantize'),
    h('div', { class: 'card' }, field('Model', model), field('Strategy', strategy), field('Output', output),
      h('button', { onclick: quantize }, 'Quantize'), qmsg),
    h('h2', {}, 'Compare'),
    h('div', { class: 'card' }, field('Eval text', text), field('Recipes', baselines), field('Strategies', strategies),
      field('Context', ctx), field('Windows', windows), h('button', { onclick: compare }, 'Compare'), cmsg),
    result);
  return {
    el,
    onSnapshot: (s: Snapshot) => {
      const qt = s.tasks.find((t) => t.id === qtask);
      if (qt) {
        if (qt.state === 'done') {
          const out = (qt as any).request?.output ?? output.value;
          qmsg.replaceChildren(h('p', { class: 'ok' }, 'done: ',
            h('a', { href: `/api/download?path=${q(out)}&token=${q(token)}`, download: '' }, `download ${out.split('/').pop()}`)));
        } else if (qt.state === 'failed') {
          error(qmsg, qt.error);
        } else {
          qmsg.replaceChildren(h('progress', { max: 1, value: qt.progress }), ` ${qt.message}`);
        }
      }
      const ct = s.tasks.find((t) => t.id === ctask);
      if (ct) {
        if (ct.state === 'done' && shown !== ct.id) {
          shown = ct.id;
          cmsg.replaceChildren();
          showCompare(ct.id).catch((e) => error(cmsg, e));
        } else if (ct.state === 'failed') {
          error(cmsg, ct.error);
        } else if (ct.state === 'running') {
          cmsg.replaceChildren(h('p', { class: 'muted' }, ct.message || 'measuring…'));
        }
      }
    },
    dispose: () => chart?.destroy(),
  };
}
