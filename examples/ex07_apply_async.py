import taskq as multiprocessing
import time


def notify(email):
    time.sleep(0.5)
    print(f"Sent: {email}")


if __name__ == "__main__":
    emails = ["a@test.com", "b@test.com", "c@test.com"]
    with multiprocessing.Pool(processes=2) as pool:
        async_results = [pool.apply_async(notify, (email,)) for email in emails]
        for ar in async_results:
            ar.get()
    print("All notifications sent")
