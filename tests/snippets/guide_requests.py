import requests
import json

def chat_with_llm():
    url = "http://YOUR_SERVER_IP:7000/v1/chat/completions"
    headers = {
        "Authorization": "Bearer YOUR_CLIENT_API_KEY",
        "Content-Type": "application/json"
    }
    data = {
        "model": "gpt-4o",
        "messages": [
            {
                "role": "user",
                "content": "Hello, how are you?"
            }
        ]
    }
    
    try:
        response = requests.post(url, headers=headers, json=data)
        response.raise_for_status()
        print("Response:", response.json())
    except requests.exceptions.RequestException as e:
        print("Error:", e)

chat_with_llm()
