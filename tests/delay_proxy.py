#!/usr/bin/env python3
"""delay_proxy.py LISTEN_PORT TARGET_HOST:TARGET_PORT DELAY_MS

A TCP relay that holds every chunk for DELAY_MS in each direction, keeping
order: a stand-in for tc netem's delay on kernels without sch_netem. When
either side closes, both are closed, so the client sees what it would see
on a real broken path. Used by tests/netns_test.sh; stops on SIGTERM.
"""
import asyncio
import signal
import sys


async def pump(reader, writer, delay):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def sender():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(sender())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await queue.put((loop.time() + delay, data))
    except (ConnectionError, OSError):
        pass
    await queue.put((0, None))
    try:
        await task
    except (ConnectionError, OSError):
        pass
    writer.close()


async def handle(creader, cwriter, target, delay):
    host, port = target.rsplit(":", 1)
    try:
        sreader, swriter = await asyncio.open_connection(host, int(port))
    except OSError:
        cwriter.close()
        return
    await asyncio.gather(pump(creader, swriter, delay), pump(sreader, cwriter, delay))


async def main():
    port, target, delay_ms = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, target, delay_ms / 1000.0), "127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"delay_proxy: 127.0.0.1:{port} -> {target}, {delay_ms} ms each way", flush=True)
    async with server:
        await stop.wait()


asyncio.run(main())
