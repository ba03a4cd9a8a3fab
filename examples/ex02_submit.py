from taskq import ProcessPoolExecutor
import time


def heavy_computation(n):
    time.sleep(1)
    return n * n


with ProcessPoolExecutor(max_workers=2) as executor:
    future1 = executor.submit(heavy_computation, 10)
    future2 = executor.submit(heavy_computation, 20)
    future3 = executor.submit(heavy_computation, 30)
    print(future1.result())
    print(future2.result())
    print(future3.result())
