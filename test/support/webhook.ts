import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Webhook<T> {
  url: string;
  received: T[];
  close: () => void;
}

/** A webhook receiver on 127.0.0.1 that keeps every JSON body POSTed to it (govloop's notifications). */
export async function startWebhook<T = Record<string, unknown>>(): Promise<Webhook<T>> {
  const received: T[] = [];
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      received.push(JSON.parse(body) as T);
      res.end('ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, received, close: () => server.close() };
}
