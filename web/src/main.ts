// Tailor's web app: one page per step (jobs, model, measurements, plan,
// quantize & compare, gradual), hash-routed so `tailor serve` needs no routes
// of its own.
import './style.css';
import { events, Snapshot } from './api';
import { h } from './dom';
import { jobsPage } from './pages/jobs';
import { modelPage } from './pages/model';
import { measurementsPage } from './pages/measurements';
import { planPage } from './pages/plan';
import { quantizePage } from './pages/quantize';
import { gradualPage } from './pages/gradual';

export interface Page {
  el: HTMLElement;
  onSnapshot?: (s: Snapshot) => void;
  dispose?: () => void;
}

const pages: Record<string, (arg: string) => Page> = {
  jobs: jobsPage,
  model: modelPage,
  measurements: measurementsPage,
  plan: planPage,
  quantize: quantizePage,
  gradual: gradualPage,
};

const app = document.getElementById('app')!;
const conn = document.getElementById('conn')!;
let current: Page | null = null;
let last: Snapshot | null = null;

function route() {
  const [, name = 'jobs', arg = ''] = location.hash.match(/^#\/([a-z]+)\/?(.*)$/) ?? [];
  const make = pages[name] ?? pages.jobs;
  current?.dispose?.();
  current = make(decodeURIComponent(arg));
  app.replaceChildren(current.el);
  if (last) current.onSnapshot?.(last);
  for (const a of document.querySelectorAll<HTMLAnchorElement>('nav a'))
    a.classList.toggle('active', a.dataset.page === (pages[name] ? name : 'jobs'));
}

events(
  (s) => {
    last = s;
    current?.onSnapshot?.(s);
  },
  (ok) => conn.replaceChildren(h('span', { class: ok ? 'ok' : 'error' }, ok ? '● live' : '● disconnected')),
);
window.addEventListener('hashchange', route);
route();
