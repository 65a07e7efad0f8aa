"""A real pymodbus TCP server for the agent's Modbus e2e test.

Usage: modbus_server.py PORT
Holding registers 0..: [215, 0xFFFF, 0x4144, 0x0000] (21.5 with scale 0.1, -1 as i16, 12.25 as f32);
input register 0: 7; coil 0: on. Prints "ready" once listening.
"""
import asyncio
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import StartAsyncTcpServer


async def main(port: int) -> None:
    # pymodbus data blocks are 1-based internally: address 0 on the wire is index 1.
    device = ModbusDeviceContext(
        co=ModbusSequentialDataBlock(1, [1, 0, 0, 0]),
        di=ModbusSequentialDataBlock(1, [0] * 4),
        hr=ModbusSequentialDataBlock(1, [215, 0xFFFF, 0x4144, 0x0000]),
        ir=ModbusSequentialDataBlock(1, [7, 0, 0, 0]),
    )
    context = ModbusServerContext(devices=device, single=True)
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, lambda: print("ready", flush=True))
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
